"""Archives: the rows of one account's interval, as fetched, kept to compare later updates with.

One gzip-compressed CSV per account and interval (header = the query's columns):
``<VISTA_BQ_ARCHIVE_DIR>/<account>/<account>.<label>.csv.gz``, where ``label`` is the interval's
UTC label in the account's date format (``/`` and blanks written as ``-`` and ``_``). A file is
written to a temporary name beside it, flushed to disk and renamed over the old one, so a reader
sees the old archive or the new one, never half of one. Cells are written as text (dates and
times in ISO 8601, NULL as an empty cell) and read back by the same row converter.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import os
from collections.abc import Iterable, Iterator, Sequence

COMPRESS_LEVEL = 5
_FILE_SAFE = str.maketrans({"/": "-", " ": "_", "\\": "-"})


def archive_path(root: str, account: str, label: str) -> str:
    return os.path.join(root, account, f"{account}.{label.translate(_FILE_SAFE)}.csv.gz")


def _text(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return value


class ArchiveWriter:
    """``with ArchiveWriter(path, columns) as w: w.write(rows); w.commit()``; leaving the block
    without ``commit()`` (an error, a stop) removes the temporary file and keeps the old one."""

    def __init__(self, path: str, columns: Sequence[str]) -> None:
        self.path = path
        self.tmp = f"{path}.tmp.{os.getpid()}"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._raw = open(self.tmp, "wb")
        self._gzip = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=COMPRESS_LEVEL)
        self._text = io.TextIOWrapper(self._gzip, encoding="utf-8", newline="")
        self._csv = csv.writer(self._text)
        self._csv.writerow(columns)
        self.rows = 0
        self._done = False

    def write(self, rows: Iterable[Sequence[object]]) -> None:
        for row in rows:
            self._csv.writerow([_text(v) for v in row])
            self.rows += 1

    def commit(self) -> None:
        self._text.flush()
        self._text.detach()
        self._gzip.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(self.tmp, self.path)
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._raw.close()
        finally:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()


def read_archive(path: str) -> tuple[tuple[str, ...], Iterator[list[str]]]:
    """The columns and the rows (as text cells) of an archive. Raises OSError if absent."""
    handle = gzip.open(path, "rt", encoding="utf-8", newline="")
    reader = csv.reader(handle)
    try:
        columns = tuple(next(reader))
    except StopIteration:
        handle.close()
        return (), iter(())

    def rows() -> Iterator[list[str]]:
        with handle:
            yield from reader

    return columns, rows()
