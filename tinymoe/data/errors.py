"""The exceptions the data loaders raise.

Every message says what was wrong and what to do about it. They subclass the built-in exception a
caller would otherwise expect (a missing dataset is a `FileNotFoundError`, a malformed one a
`ValueError`), so existing `except` clauses keep working.
"""

from __future__ import annotations

import pickle


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not where it was looked for (the message says where to get it and put it)."""


class DatasetFormatError(ValueError):
    """The dataset is there but its layout or contents are not what the format promises."""


class ImageDecodeError(DatasetFormatError):
    """One image could not be decoded. `name` is the file (or the zip member), `source` where it lives."""

    def __init__(self, message: str, name: str, source: str):
        super().__init__(message)
        self.name = name
        self.source = source


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for something other than plain containers and NumPy arrays, and was refused."""


class DownloadError(OSError):
    """A download failed (network error, incomplete file); a partial file is kept to resume from."""


class ChecksumError(DownloadError):
    """A downloaded file's checksum did not match; the bad file has been deleted."""
