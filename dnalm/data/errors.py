"""The one exception type of the data pipeline.

A :class:`DataError` is a user mistake in an input file or a data option. Its message names the file, the
record and the position (or the option) and says what to do; the CLI prints it as one line and exits 2.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad genome input or data option (the message names the file, record and position)."""


MAX_LISTED = 12  # offending rows listed in one error message


def listing(items: list[str], what: str) -> str:
    """'N what: first, second, ...' (at most MAX_LISTED items) for an error message that lists rows."""
    shown = "; ".join(items[:MAX_LISTED])
    more = f"; ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"{len(items)} {what}: {shown}{more}"
