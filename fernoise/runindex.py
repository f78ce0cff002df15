"""Finished runs found from the *requested* configuration, without importing torch.

``fernoise train`` keys a run by resolved values (``--device auto`` -> cuda or cpu,
``--precision auto`` -> bf16 or fp32, the pretrained file's sha256), and resolving them needs
torch (seconds per call). A sweep re-checks hundreds of finished cells, so each finished run
also gets a small index entry, keyed by what was *asked for*:

- the :class:`~fernoise.train.config.TrainConfig` as given (``workers`` excluded: it changes no
  result), the world size from the environment;
- the input manifest by identity: its resolved path, the sha256 of its bytes, and the key and
  content digests its metadata records (an edited manifest misses, and train keys it on its
  content);
- the pretrained start by identity: a file's resolved path and stat (a folder: those
  of the files in it; ``latest``: the workspace lock's ``pretrain`` entry);
- with ``--device auto``: the machine's device class read cheaply (``/dev/nvidia*`` and
  ``CUDA_VISIBLE_DEVICES``) and the installed torch build (``2.x+cu130`` vs ``+cpu``);
- the fernoise version, the train stage version and the method's defaults (optimiser and
  ``Params``, from the ``fernoise.methods`` registry), which unset options resolve from.

An entry (``<runs_dir>/.fernoise/index/<hash>.json``) names the run folder, its stage key and
the size, mtime, ctime (ns) and inode of every output its stamp lists, taken after checking
each file's sha256 against the stamp. A lookup trusts a file whose stat is unchanged and
hashes any other one against the stamp (the shortcut git uses); a file changed behind the
tool's back, even with its mtime put back, therefore still fails the stamp and the run is
planned and rebuilt as usual. A run that skipped rows (unusable crops) is never indexed.
A miss costs nothing but the normal path: :func:`fernoise.train.stage.train` calls :func:`lookup`
first, then trains and calls :func:`record`.

The same is done for ``eval`` (:func:`lookup_eval` / :func:`record_eval`): keyed by the run's
key, ``cam``, the split and the eval stage version, valid while everything the evaluation read
is unchanged since it was checked: ``model.pt``, ``metrics.jsonl`` and ``config.json`` (their
stat), the manifest (path, sha256, recorded key and content digests) and each test crop (its
stat, with its recorded sha256). Anything else falls through to
:func:`fernoise.evaluate.stage.evaluate_run`, which checks the model against train's stamp and the
crops against their sha256.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fernoise.cache import (
    StageResult,
    Workspace,
    atomic_write_json,
    dict_hash,
    file_sha256,
    read_json,
    stamp_path,
)
from fernoise.errors import FernoiseError

INDEX_VERSION = (
    2  # 2: --augment auto means device on the CPU too (an entry of 1 named a workers run)
)
NOT_IN_KEY = ("workers",)  # TrainConfig fields that change no result
INDEX_DIR = Path(".fernoise") / "index"


# ----------------------------------------------------------------------------- cheap facts
@functools.cache
def _device_nodes() -> bool:
    return bool(glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd"))


def device_class() -> str:
    """``cuda`` when this machine exposes a GPU to this process, else ``cpu`` (no torch import).

    Reads ``CUDA_VISIBLE_DEVICES`` (empty or ``-1`` hides every GPU) and the device nodes of
    the NVIDIA (``/dev/nvidia0``...) and ROCm (``/dev/kfd``) drivers.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return "cpu"
    return "cuda" if _device_nodes() else "cpu"


@functools.cache
def torch_build() -> str | None:
    """The installed torch's version string (``2.14.1+cu130``), read from package metadata."""
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def runs_root(runs_dir: str | os.PathLike | None, workspace: Workspace | None = None) -> Path:
    """The folder of run folders, as :func:`fernoise.train.stage.plan` resolves it."""
    return (workspace or Workspace()).runs_dir(runs_dir).resolve()


def manifest_identity(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest without parsing its rows: its resolved path, the sha256 of its bytes (an
    edit changes it even when the size stays and the mtime is put back; about 3 ms for a
    4.4 MB manifest of 32,137 rows, FERPlus's size), and the key and content digests its
    metadata records."""
    from fernoise.manifest import read_meta, resolve_manifest

    p = resolve_manifest(path)
    meta = read_meta(p)
    return {
        "file": str(p.resolve()),
        "sha256": file_sha256(p),
        "key": meta.get("key"),
        "content": meta.get("content"),
    }


def _stat(path: Path) -> list[int] | None:
    """Size, mtime, ctime (ns) and inode, as git's index keeps them: a tool can put the mtime
    back after an edit, not the ctime, and a file replaced by another has a new inode."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def pretrained_identity(value: str | None, workspace: Workspace | None = None) -> Any:
    """What names the pretrained start without hashing it, or ``...`` (Ellipsis) when it
    cannot be told cheaply (then no index is used)."""
    if value is None:
        return None
    p = Path(value)
    if p.is_file():
        return {"file": str(p.resolve()), "stat": _stat(p)}
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.is_file())
        return {"dir": str(p.resolve()), "files": {q.name: _stat(q) for q in files}}
    if value == "latest":
        ws = workspace or Workspace()
        entry = ws.read()["stages"].get("pretrain")
        if not entry or not entry.get("output"):
            return ...
        target = (
            Path(entry["output"])
            if Path(entry["output"]).is_absolute()
            else ws.root / entry["output"]
        )
        return {
            "latest": [entry.get("key"), entry.get("output")],
            "target": pretrained_identity(str(target)) if target.exists() else None,
        }
    return ...


def method_defaults(method: str | None) -> Any:
    """The defaults ``train`` resolves unset options from: the method's optimiser defaults and
    its ``Params`` defaults (``fernoise.methods`` registry; None without one, or for an unknown
    or no method), so a changed default misses the index as it misses the stage key."""
    if method is None:  # not a registered name: as for an unknown one
        return None
    try:
        from fernoise import methods

        cls = methods.get(method)
        optim, params = getattr(cls, "optim", None), getattr(cls, "Params", None)
        return {
            "optim": asdict(optim) if optim is not None else None,
            "params": asdict(params()) if params is not None else None,
        }
    except (ImportError, AttributeError, TypeError, FernoiseError):
        return None


def world_size(cfg: Any) -> int:
    """The world size train will use: torchrun's ``WORLD_SIZE`` or ``cfg.devices``."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return world if world > 1 else int(getattr(cfg, "devices", 1))


# ----------------------------------------------------------------------------- stat checks
def snapshot(stamp: Mapping[str, Any], base: Path) -> dict[str, list[int]] | None:
    """``{output: [size, mtime_ns, ctime_ns, inode]}`` of every output ``stamp`` lists, each hashed against the
    stamp first; None when one is missing or differs."""
    out = {}
    for rel, digest in stamp.get("outputs", {}).items():
        p = base / rel
        before = _stat(p)
        if before is None or file_sha256(p) != digest or _stat(p) != before:
            return None
        out[rel] = before
    return out


def intact(
    stamp: Mapping[str, Any] | None, key: str | None, base: Path, stats: Mapping[str, Any]
) -> bool:
    """Like :func:`fernoise.cache.outputs_intact`, but a file whose stat equals the one
    in ``stats`` (taken when it was last hashed) is not hashed again."""
    if not stamp or stamp.get("key") != key:
        return False
    for rel, digest in stamp.get("outputs", {}).items():
        p = base / rel
        now = _stat(p)
        if now is None:
            return False
        if list(stats.get(rel) or []) == now:
            continue
        if not p.is_file() or file_sha256(p) != digest:
            return False
    return True


def _entry_path(runs: Path, request: Mapping[str, Any]) -> Path:
    return runs / INDEX_DIR / f"{dict_hash(request)[:32]}.json"


# ----------------------------------------------------------------------------- train
def train_request(
    manifest_path: str | os.PathLike, cfg: Any, workspace: Workspace | None = None
) -> dict | None:
    """The index key material of one ``train`` call, or None when it cannot be told cheaply."""
    from fernoise import __version__
    from fernoise.train.config import VERSION

    pre = pretrained_identity(getattr(cfg, "pretrained", None), workspace)
    if pre is ...:
        return None
    config = {k: v for k, v in asdict(cfg).items() if k not in NOT_IN_KEY}
    host = (
        {"device_class": device_class(), "torch": torch_build()}
        if config.get("device") == "auto"
        else None
    )
    return {
        "index": INDEX_VERSION,
        "fernoise": __version__,
        "stage_version": VERSION,
        "config": config,
        "manifest": manifest_identity(manifest_path),
        "pretrained": pre,
        "world": world_size(cfg),
        "host": host,
        "defaults": method_defaults(config.get("method")),
    }


def lookup(
    manifest_path, cfg, *, runs_dir=None, workspace: Workspace | None = None
) -> StageResult | None:
    """The finished run of this requested configuration as a cache-hit StageResult (recorded in
    ``workspace`` like a hit of ``train``), or None (not indexed, or an output changed)."""
    t0 = time.perf_counter()
    try:
        request = train_request(manifest_path, cfg, workspace)
    except (OSError, ValueError, FernoiseError):
        return None  # let train() report the problem in its own words
    if request is None:
        return None
    runs = runs_root(runs_dir, workspace)
    entry = read_json(_entry_path(runs, request))
    if not isinstance(entry, dict) or entry.get("request") != request:
        return None
    run_dir = runs / str(entry.get("run"))
    stamp = read_json(stamp_path(run_dir / "model.pt"))
    if (
        stamp is None  # (intact says so too)
        or not intact(stamp, entry.get("key"), run_dir, entry.get("files") or {})
        or skipped_rows(run_dir)
    ):
        return None
    if workspace is not None:
        workspace.record(
            "train", key=entry["key"], output=run_dir, params=stamp.get("params") or {}
        )
    return StageResult(
        "train", entry["key"], run_dir, True, time.perf_counter() - t0, info={"index": True}
    )


def record(
    manifest_path, cfg, result: StageResult, *, runs_dir=None, workspace: Workspace | None = None
) -> Path | None:
    """Index the finished run ``result`` of this request; returns the entry's path (or None when
    the request cannot be indexed or the run's outputs do not match their stamp)."""
    try:
        request = train_request(manifest_path, cfg, workspace)
    except (OSError, ValueError, FernoiseError):
        return None
    if request is None:
        return None
    run_dir = Path(result.output).resolve()
    stamp = read_json(stamp_path(run_dir / "model.pt"))
    if not stamp or stamp.get("key") != result.key or skipped_rows(run_dir):
        return None
    files = snapshot(stamp, run_dir)
    if files is None:
        return None
    runs = runs_root(runs_dir, workspace)
    try:
        rel = os.path.relpath(run_dir, runs)
    except ValueError:  # another drive (Windows)
        rel = str(run_dir)
    path = _entry_path(runs, request)
    atomic_write_json(path, {"request": request, "key": result.key, "run": rel, "files": files})
    return path


def skipped_rows(run_dir: Path) -> bool:
    """Whether the run skipped rows whose crop was unusable: such a run is never indexed (the
    crops, not the manifest, decide its key; ``fernoise align`` may have repaired them since),
    so train checks its rows every time."""
    config = read_json(run_dir / "config.json")
    return not isinstance(config, dict) or bool(config.get("skipped_crops"))


# ----------------------------------------------------------------------------- eval
EVAL_INPUTS = ("model.pt", "metrics.jsonl", "config.json")


_TEST_ROWS: dict[tuple, tuple[list[str], list[str | None]]] = {}


def _test_crops(manifest: Path) -> tuple[list[str], list[str | None]]:
    """The test rows' crop paths and recorded ``crop_sha256`` (the rows eval selects), read
    once per manifest version (path and stat) in this process."""
    import pyarrow.parquet as pq

    from fernoise.evaluate.stage import select_test_rows

    ident = (str(manifest.resolve()), *(_stat(manifest) or []))
    if ident not in _TEST_ROWS:
        names = pq.read_schema(manifest).names
        cols = [c for c in ("split", "label", "path", "status", "crop_sha256") if c in names]
        df = pq.read_table(manifest, columns=cols).to_pandas()
        rows = select_test_rows(SimpleNamespace(df=df, path=manifest), "test")
        shas = rows["crop_sha256"].tolist() if "crop_sha256" in rows.columns else [None] * len(rows)
        _TEST_ROWS[ident] = (
            [str(manifest.parent / p) for p in rows["path"]],
            [s if isinstance(s, str) else None for s in shas],
        )
    return _TEST_ROWS[ident]


def crops_state(manifest: str | os.PathLike) -> str:
    """sha256 over every test crop's path, recorded sha256 and stat (one stat each):
    a crop changed, added or removed behind the tool's back changes it."""
    paths, shas = _test_crops(Path(manifest))
    h = hashlib.sha256()
    for p, sha in zip(paths, shas, strict=True):
        st = _stat(Path(p))
        h.update(f"{p}\t{sha or '-'}\t{':'.join(map(str, st)) if st else 'missing'}\n".encode())
    return h.hexdigest()


def _eval_request(run_dir: Path, cam: int) -> dict | None:
    from fernoise.evaluate.stage import VERSION

    config = read_json(run_dir / "config.json")
    if not isinstance(config, dict) or not config.get("key"):
        return None
    return {
        "index": INDEX_VERSION,
        "eval_version": VERSION,
        "run": config["key"],
        "cam": int(cam),
        "split": "test",
    }


def lookup_eval(
    run_dir: str | os.PathLike, *, cam: int = 0, workspace: Workspace | None = None
) -> dict | None:
    """The parsed ``eval.json`` of the run's own-manifest test evaluation when it is indexed
    and nothing it read changed: ``model.pt``, ``metrics.jsonl``, ``config.json``, the
    manifest (path, sha256, recorded key and content) and every test crop (stat),
    else None (then :func:`fernoise.evaluate.stage.evaluate_run` checks and decides)."""
    run_dir = Path(run_dir).resolve()
    request = _eval_request(run_dir, cam)
    if request is None:
        return None
    entry = read_json(_entry_path(run_dir, request))
    if not isinstance(entry, dict) or entry.get("request") != request:
        return None
    now = eval_inputs(run_dir)
    if any(v is None for v in now.values()) or now != entry.get("inputs"):
        return None
    out = run_dir / "eval.json"
    if not intact(read_json(stamp_path(out)), entry.get("key"), run_dir, entry.get("files") or {}):
        return None
    report = read_json(out)
    if not isinstance(report, dict):
        return None
    if workspace is not None:
        workspace.record("eval", key=entry["key"], output=out, params={"cam": int(cam)})
    return report


def eval_inputs(run_dir: str | os.PathLike) -> dict[str, Any]:
    """What an evaluation of the run on its own manifest reads, cheaply: the stat of
    ``model.pt``, ``metrics.jsonl`` and ``config.json``, the manifest's identity and the test
    crops' state (None where unknown). Take it before evaluating."""
    run_dir = Path(run_dir).resolve()
    out: dict[str, Any] = {name: _stat(run_dir / name) for name in EVAL_INPUTS}
    config = read_json(run_dir / "config.json")
    manifest = config.get("manifest") if isinstance(config, dict) else None
    try:
        out["manifest"] = manifest_identity(manifest) if manifest else None
        out["crops"] = crops_state(manifest) if manifest else None
    except (OSError, ValueError, KeyError, FernoiseError):
        out["manifest"] = out["crops"] = None
    return out


def record_eval(
    run_dir: str | os.PathLike, key: str, *, cam: int = 0, inputs_before: Mapping[str, Any]
) -> Path | None:
    """Index the evaluation with stage key ``key`` of the run; ``inputs_before`` is
    :func:`eval_inputs` taken before the evaluation (no entry when anything changed meanwhile
    or is unknown)."""
    run_dir = Path(run_dir).resolve()
    if any(v is None for v in inputs_before.values()) or dict(inputs_before) != eval_inputs(
        run_dir
    ):
        return None
    request = _eval_request(run_dir, cam)
    stamp = read_json(stamp_path(run_dir / "eval.json"))
    if request is None or not stamp or stamp.get("key") != key:
        return None
    files = snapshot(stamp, run_dir)
    if files is None:
        return None
    path = _entry_path(run_dir, request)
    atomic_write_json(
        path, {"request": request, "key": key, "inputs": dict(inputs_before), "files": files}
    )
    return path
