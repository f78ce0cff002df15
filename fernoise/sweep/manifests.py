"""The manifests a sweep runs on: one, a list (an axis), or the folds of a ``fernoise split``.

Reads the manifests' metadata (footer only) and the names of the files beside them; writes
nothing. :func:`resolve` turns the grid's ``manifest`` / ``folds`` keys (or the command's
MANIFEST) into ``[(path, tag)]``: the tag is the manifest's part of a cell id (``fold-0``,
``loso-3``, ``m-<stem>``), empty for a sweep of one manifest. :func:`state_tag` names the
sweep's state folder ``sweeps/<grid name>/<state tag>/`` after the manifest(s), so two sweeps of
one grid on different manifests or folds never share (and overwrite) their cells and table.

Folds of a split (``folds = "all"`` or ``[0, 2]``): the manifest named may be the split's clean
input (its folds are found beside it, ``<stem>.fold-<i>-of-<K>-s<seed>.parquet`` or
``.loso-...``, or in the workspace's last ``split`` record when they went to another folder) or
any one fold (its siblings of the same split are taken). Every fold asked for must exist.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fernoise.errors import FernoiseError

FOLD_NAME = re.compile(
    r"^(?P<stem>.+)\.(?P<kind>fold|loso)-(?P<i>\d+)-of-(?P<k>\d+)-s(?P<seed>\d+)$"
)


def _family(path: Path) -> tuple[str, str, int, int] | None:
    """``(stem, kind, K, seed)`` of a fold manifest's file name, or None."""
    m = FOLD_NAME.match(path.name.removesuffix(".parquet"))
    if not m:
        return None
    return m["stem"], m["kind"], int(m["k"]), int(m["seed"])


def _fold_path(folder: Path, family: tuple[str, str, int, int], i: int) -> Path:
    stem, kind, k, seed = family
    return folder / f"{stem}.{kind}-{i}-of-{k}-s{seed}.parquet"


def _families_beside(path: Path) -> dict[tuple[str, str, int, int], Path]:
    """The split families whose fold 0 lies beside the clean manifest ``path``."""
    out = {}
    for p in sorted(path.parent.glob(f"{path.stem}.*-0-of-*-s*.parquet")):
        fam = _family(p)
        if fam is not None and fam[0] == path.stem:
            out[fam] = p.parent
    return out


def _from_lock(path: Path, workspace: Any) -> list[Path]:
    """The workspace's last ``split`` outputs when they were made from ``path`` (its key)."""
    from fernoise.manifest import read_meta

    entry = (workspace.read()["stages"] if workspace is not None else {}).get("split") or {}
    outs = [Path(p) for p in (entry.get("params") or {}).get("outputs") or []]
    if not outs or not outs[0].is_file():
        return []
    key = read_meta(path).get("key")
    made_from = (read_meta(outs[0]).get("split") or {}).get("input_key")
    return outs if key and made_from == key else []


def fold_manifests(
    path: Path, folds: str | Sequence[int], workspace: Any = None
) -> list[tuple[Path, str]]:
    """``[(fold manifest, "fold-<i>")]`` of the folds asked for (see the module docstring)."""
    fam = _family(path)
    if fam is not None:
        folder, all_paths = path.parent, None
    else:
        found = _families_beside(path)
        if len(found) > 1:
            names = ", ".join(f"{s}.{k}-*-of-{n}-s{seed}" for s, k, n, seed in found)
            raise FernoiseError(
                f"{path.name} has several splits beside it ({names}); name one fold manifest of "
                "the split you mean as the grid's manifest",
                flag="MANIFEST",
            )
        if found:
            fam, folder = next(iter(found.items()))
            all_paths = None
        else:
            all_paths = _from_lock(path, workspace)
            if not all_paths:
                raise FernoiseError(
                    f"the grid asks for folds, but no folds of {path.name} were found beside it; "
                    f"run `fernoise split {path}` first, or name one fold manifest",
                    flag="MANIFEST",
                )
            fam, folder = _family(all_paths[0]), all_paths[0].parent
    if fam is None:
        raise FernoiseError(f"{all_paths} are not named as fold manifests", flag="MANIFEST")
    k = fam[2]
    wanted: list[int] = list(range(k)) if isinstance(folds, str) else [int(i) for i in folds]
    bad = [i for i in wanted if i >= k]
    if bad:
        raise FernoiseError(
            f"fold {bad[0]} asked for, but the split has {k} folds (0..{k - 1})", flag="GRID"
        )
    out = []
    for i in wanted:
        p = all_paths[i] if all_paths and i < len(all_paths) else _fold_path(folder, fam, i)
        if not p.is_file():
            raise FernoiseError(
                f"fold {i} of {k} ({p}) does not exist; re-run `fernoise split`", flag="MANIFEST"
            )
        out.append((p, f"{fam[1]}-{i}"))
    return out


def list_tags(paths: Sequence[Path]) -> list[str]:
    """``m-<stem>`` per manifest of a list; a hash of the path is added where stems clash."""
    stems = [re.sub(r"[^A-Za-z0-9._-]", "_", p.stem) for p in paths]
    return [
        f"m-{s}" + (f"-{_hash(str(p.resolve()))[:6]}" if stems.count(s) > 1 else "")
        for s, p in zip(stems, paths, strict=True)
    ]


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def state_tag(paths: Sequence[Path], folds: str | Sequence[int] | None = None) -> str:
    """The state folder's name for a sweep over ``paths``: ``<stem>-<hash of the resolved
    path>`` for one manifest, ``<split stem>.<fold|loso>-<all|0+2>-of-<K>-s<seed>-<hash>``
    for folds, ``<first stem>+<n-1>-<hash>`` for a list."""
    h = _hash("\n".join(str(p.resolve()) for p in paths))[:8]
    if len(paths) == 1 and folds is None:
        return f"{paths[0].stem}-{h}"
    fam = _family(paths[0]) if folds is not None else None
    if fam is not None:
        stem, kind, k, seed = fam
        which = "all" if isinstance(folds, str) else "+".join(str(i) for i in folds or ())
        return f"{stem}.{kind}-{which}-of-{k}-s{seed}-{h}"
    return f"{paths[0].stem}+{len(paths) - 1}-{h}"
