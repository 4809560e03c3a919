"""What each ``copydistill`` command adds to the parser and runs (the table is in ``cli``)."""

from copydistill.commands import core, search

__all__ = ["core", "search"]
