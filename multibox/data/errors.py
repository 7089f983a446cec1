"""The error every reader of data raises: below the parsers, the file I/O and validation alike."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad input data; the message names the file, the line or annotation, and what to do."""
