"""The one exception type of the data pipeline.

A :class:`DataError` is a user mistake in an input file or a data option. Its message names the file, the
record and the position (or the option) and says what to do; the CLI prints it as one line and exits 2.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad genome input or data option (the message names the file, record and position)."""
