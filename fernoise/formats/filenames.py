"""Labels from file names (``fernoise align --label-regex PATTERN [--label-map CODE=CLASS,...]``).

JAFFE and many lab datasets keep the expression only in the file name (``KA.AN1.39.tiff``:
``AN`` is anger). The pattern is searched in each image's path relative to RAW; its group
named ``label``, else its first group, is the row's *code*; ``label_map`` turns codes into
class names (names or aliases), and without a map the code itself must be a class name or
an alias. Nothing here reads a file: the paths come from the scan of RAW.

Every row gets a status (column ``label_status``): ``ok``; ``no_match`` (the pattern does not
match the path, or its group is empty); ``unknown_code`` (a code the map, or the class
names, do not know). Rows that are not ``ok`` have a null label; the matched code is kept in
``label_code``. A pattern that gives no row a label is an error, as a mistyped pattern.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from fernoise.errors import FernoiseError
from fernoise.labels import ALIASES, CLASSES, canonical_name

SHOWN = 5  # paths shown of the rows that do not match


def compile_label_regex(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled; refused (flag ``--label-regex``) when invalid or without a group."""
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise FernoiseError(
            f"{pattern!r} is not a valid regular expression ({e})", flag="--label-regex"
        ) from None
    if rx.groups < 1:
        raise FernoiseError(
            f"{pattern!r} has no group; put the expression code in parentheses or a group "
            r"named label, e.g. '\.([A-Z]{2})\d' or '\.(?P<label>[A-Z]{2})'",
            flag="--label-regex",
        )
    return rx


def parse_label_map(value: str | Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    """``--label-map AN=anger,HA=happy`` (a string, a list of ``CODE=CLASS`` items, or a
    preset's table) -> code -> canonical class name. Codes are kept as written."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        items = [(str(k), str(v)) for k, v in value.items()]
    else:
        parts = value.split(",") if isinstance(value, str) else [str(x) for x in value]
        items = []
        for part in (p.strip() for p in parts):
            if not part:
                continue
            code, eq, name = part.partition("=")
            if not eq or not code.strip() or not name.strip():
                raise FernoiseError(
                    f"expected CODE=CLASS items (e.g. AN=anger,HA=happy), got {part!r}",
                    flag="--label-map",
                )
            items.append((code.strip(), name.strip()))
    out: dict[str, str] = {}
    for code, name in items:
        cls = canonical_name(name, flag="--label-map")
        if out.get(code, cls) != cls:
            raise FernoiseError(
                f"code {code!r} is mapped twice: {out[code]} and {cls}", flag="--label-map"
            )
        out[code] = cls
    return out


def labels_from_names(
    src_paths: Sequence[str], pattern: str, label_map: Mapping[str, str]
) -> tuple[list[int | None], list[str | None], list[str], dict[str, Any]]:
    """``(canonical labels, codes, statuses, info)`` per path (see the module docstring).

    ``info``: ``format`` ``"regex"``, the pattern, the map, ``images``, ``labelled``,
    ``no_match`` (+ ``no_match_examples``), ``unknown_codes`` (code -> rows)."""
    rx = compile_label_regex(pattern)
    lookup = {str(k): v for k, v in label_map.items()}
    labels: list[int | None] = []
    codes: list[str | None] = []
    statuses: list[str] = []
    unknown: dict[str, int] = {}
    no_match: list[str] = []
    for s in src_paths:
        m = rx.search(s)
        code = None
        if m is not None:
            code = m.group("label") if "label" in rx.groupindex else m.group(1)
        if not code:
            labels.append(None)
            codes.append(None)
            statuses.append("no_match")
            no_match.append(s)
            continue
        name = lookup.get(code) if lookup else ALIASES.get(code.strip().lower())
        codes.append(code)
        if name is None:
            labels.append(None)
            statuses.append("unknown_code")
            unknown[code] = unknown.get(code, 0) + 1
            continue
        labels.append(CLASSES.index(name))
        statuses.append("ok")
    labelled = sum(1 for x in labels if x is not None)
    if src_paths and labelled == 0:
        why = (
            f"its codes {sorted(unknown)[:8]} are not in "
            + ("--label-map" if lookup else "the class names (give --label-map CODE=CLASS,...)")
            if unknown
            else f"it matches none of the paths (e.g. {src_paths[0]!r}; searched in the path relative to RAW)"
        )
        raise FernoiseError(
            f"--label-regex {pattern!r} labels none of the {len(src_paths)} images: {why}",
            flag="--label-regex" if not unknown or not lookup else "--label-map",
        )
    info = {
        "format": "regex",
        "regex": pattern,
        "map": dict(sorted(lookup.items())),
        "images": len(src_paths),
        "labelled": labelled,
        "no_match": len(no_match),
        "no_match_examples": no_match[:SHOWN],
        "unknown_codes": dict(sorted(unknown.items())),
    }
    return labels, codes, statuses, info
