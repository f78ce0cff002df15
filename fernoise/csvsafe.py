"""CSV cells a spreadsheet will not run: every CSV fernoise writes goes through here.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula to
Excel, LibreOffice and Google Sheets (a file named ``=HYPERLINK(...).jpg`` in a predictions
CSV would run when the CSV is opened). As OWASP's CSV-injection advice says, such a string
cell gets a leading single quote, which the spreadsheet shows as text. Numbers are left
alone: non-string cells, and strings that are a plain decimal number (``-0.5``, ``+1e-3``),
which a spreadsheet reads as that number and never runs.

- :func:`cell` / :func:`row`: one value / a list of values, escaped.
- :func:`writer`: ``csv.writer`` whose ``writerow``/``writerows`` escape every cell.
- :class:`DictWriter`: ``csv.DictWriter`` that does the same.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from typing import Any

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def cell(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is a string a spreadsheet would run."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def row(values: Iterable[Any]) -> list[Any]:
    return [cell(v) for v in values]


class _Writer:
    def __init__(self, inner: Any):
        self._inner = inner
        self.dialect = inner.dialect

    def writerow(self, values: Iterable[Any]) -> Any:
        return self._inner.writerow(row(values))

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for r in rows:
            self.writerow(r)


def writer(fh: Any, **kwargs: Any) -> _Writer:
    """``csv.writer(fh, **kwargs)`` escaping every cell (see the module docstring)."""
    return _Writer(csv.writer(fh, **kwargs))


class DictWriter(csv.DictWriter):
    """``csv.DictWriter`` escaping every cell (the header too: ``writeheader`` calls ``writerow``)."""

    def writerow(self, rowdict: Mapping[str, Any]) -> Any:
        return super().writerow({k: cell(v) for k, v in rowdict.items()})

    def writerows(self, rowdicts: Iterable[Mapping[str, Any]]) -> None:
        for r in rowdicts:
            self.writerow(r)
