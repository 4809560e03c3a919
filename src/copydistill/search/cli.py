"""Subcommands of the search tool (index build/add/search, dedup, calibrate)."""

from __future__ import annotations


def register(sub) -> dict:
    """Add the search subcommands to ``sub``; return {(command, subcommand): handler}."""
    return {}
