"""Command-line value checks (argparse ``type=``): a bad number or policy is refused at parse time,
before any model is loaded, with a one-line message naming the option."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``copydistill CMD: error: ... (see --help)``."""

    def error(self, message: str):
        message = message.removeprefix("argument ")  # "argument --k: ..." -> "--k: ..."
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

    def exit(self, status: int = 0, message: str | None = None):
        if message:
            sys.stderr.write(message if status == 0 else " ".join(message.split()) + "\n")
        sys.exit(status)


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """A whole number in [low, high]."""
    bounds = f">= {low}" if high is None else f"from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range; use a whole number {bounds}")
        return value

    parse.__name__ = "integer"
    return parse


positive = integer(1)
seed = integer(0, 2**32 - 1)  # numpy's and torch's seed range


def score(text: str) -> float:
    """A cosine score in [-1, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is out of range; a cosine score is from -1 to 1")
    return value


def positive_number(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is out of range; use a number > 0")
    return value


def threshold(text: str) -> str:
    """``auto``, ``auto99`` or a cosine score in [-1, 1] (kept as text for ``resolve_threshold``)."""
    if text in ("auto", "auto99"):
        return text
    try:
        score(text)
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{err}; use auto, auto99 or a score such as 0.75") from None
    return text


def resize_policy(text: str) -> str:
    """A resize policy the models understand (``short:288``, ``square:288``, ``long:800``, ``none``)."""
    from copydistill.errors import CopydistillError
    from copydistill.models.descriptor import ResizePolicy

    try:
        ResizePolicy.parse(text)
    except CopydistillError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text
