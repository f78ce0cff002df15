"""`fernoise sweep`: a grid file -> cells -> corrupt -> train -> eval, resumable, sharded.

A grid file (TOML; ``grids/*.toml``) declares a study over one clean aligned manifest::

    name = "table5"                       # state folder: <workspace>/sweeps/<name>/ (default: file stem)
    manifest = "out/manifest.parquet"     # optional; else the command's MANIFEST, else the latest `align`
    methods = ["ce", "nl", "pc", "ncctfer"]
    seeds = [0, 1, 2]
    pretrained = ["none", "backbone.pt", "latest"]   # none | a file or folder | a pretrain stage
    noise = ["clean", {kind = "sym", rates = [0.1, 0.3]}, {kind = "asym", rate = 0.3},
             {kind = "column", column = "fer2013_label"}]
    [train]                               # any `fernoise train` option: a value, or a list = an axis
    epochs = 40
    image_size = [112, 224]
    [train.ncctfer]                       # options for one method only
    k = 4
    [eval]
    cam = 0

A cell is one (seed, pretrained, train-option values, noise, method); cells are ordered in that
nesting (method innermost, so each noise setting's row of methods fills first, and seed 0 of
every cell comes before seed 1). Paths in the file are relative to the workspace root.
Everything is checked before anything runs (:func:`plan`): an unknown key or value is a
one-line error naming the key and the valid ones, and every cell's TrainConfig and noise
parameters are built.

Each cell then runs the existing stages through their caches: ``run_corrupt`` (in this
process, under a file lock so concurrent shards never write one noisy manifest twice at
once), then ``train`` and ``evaluate_run`` in a child process (:mod:`fernoise.sweepcell`),
one per GPU with ``gpus``. A cell whose run and evaluation are indexed
(:mod:`fernoise.runindex`) is done without starting a child or importing torch.

State: ``<workspace>/sweeps/<name>/cells/<cell id>.json`` (one file per cell: status, run,
accuracies, reason, shard, gpu, times; written atomically by the process that runs the
cell), ``logs/<cell id>.log`` (the child's stderr) and ``table.csv`` / ``table.md`` (every
cell of the grid, rewritten under a file lock by each process when it ends, from the cell
files, so the last shard to finish writes the complete table).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fernoise.cache import Workspace, atomic_write_json, atomic_write_text, dict_hash, read_json
from fernoise.errors import FernoiseError

TOP_KEYS = ("description", "eval", "manifest", "methods", "name", "noise", "pretrained", "seeds", "train")
NOISE_KEYS = ("column", "kind", "matrix", "pairs", "rate", "rates", "seed")
EVAL_KEYS = ("cam",)
AXIS_KEYS = {"method": "methods", "seed": "seeds", "pretrained": "pretrained"}  # set at the top level
STATUSES = ("queued", "running", "done", "failed")


# ----------------------------------------------------------------------------- registries
def method_names() -> tuple[str, ...]:
    """The method names ``fernoise train`` accepts: the ``fernoise.methods`` registry when it
    exists, else ``fernoise.train.METHODS``."""
    try:
        from fernoise import methods  # type: ignore[attr-defined]

        return tuple(methods.names())
    except ImportError:
        from fernoise.train import METHODS

        return tuple(METHODS)


def noise_kinds() -> tuple[str, ...]:
    from fernoise.corrupt import KINDS

    return tuple(KINDS)


def train_fields() -> dict[str, str]:
    """TrainConfig field name -> its annotation (a string such as ``"float | None"``), plus every
    method flag (``fernoise.methods``) by its name without dashes (``k``, ``gce_q``)."""
    from fernoise.train import TrainConfig

    out = {f.name: str(f.type) for f in fields(TrainConfig) if f.name != "method_params"}
    for name, (_flag, annotation) in method_options().items():
        out.setdefault(name, annotation)
    return out


def method_options() -> dict[str, tuple[str, str]]:
    """Method flags as grid keys: ``{"gce_q": ("--gce-q", "float"), "k": ("--k", "int"), ...}``."""
    from fernoise import methods

    out = {}
    for flag, owners in methods.all_flags().items():
        name, field_name = next(iter(owners.items()))
        default = next(f.default for f in fields(methods.get(name).Params) if f.name == field_name)
        out[flag.removeprefix("--").replace("-", "_")] = (flag, type(default).__name__)
    return out


def _train_config(method: str, seed: int, pretrained: str | None, glob: dict[str, Any], own: dict[str, Any]):
    """The cell's TrainConfig: method flags go to ``method_params`` (those of the ``[train]``
    table only to the methods that have them; a method's own table may not name another's)."""
    from fernoise import methods
    from fernoise.train import TrainConfig

    mopts, owners = method_options(), methods.all_flags()
    given, kw = {}, {}
    for key, value in {**glob, **own}.items():
        if key in mopts:
            flag = mopts[key][0]
            if key in own or method in owners[flag]:
                given[flag] = value
        else:
            kw[key] = value
    return TrainConfig(method=method, method_params=methods.make_params(method, given), seed=seed,
                       pretrained=pretrained, **kw)


# ----------------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class Noise:
    """One noise setting of the grid: ``kind`` None is clean (no corrupt stage)."""

    kind: str | None = None
    rate: float | None = None
    seed: int | str = 0
    """The noise draw's seed, or ``"train"``: the cell's training seed."""
    pairs: str | None = None
    matrix: str | None = None
    column: str | None = None

    def label(self) -> str:
        """``clean``, ``sym 30%``, ``asym 10%``, ``column fer2013_label``, ``matrix T.csv``."""
        if self.kind is None:
            return "clean"
        if self.rate is not None:
            pct = self.rate * 100
            text = f"{pct:.0f}%" if pct == round(pct) else f"{pct:.1f}%"
            return f"{self.kind} {text}"
        if self.kind == "column":
            return f"column {self.column}"
        if self.kind == "matrix":
            return f"matrix {Path(str(self.matrix)).name}"
        return str(self.kind)

    def slug(self) -> str:
        if self.kind is None:
            return "clean"
        text = self.label().replace(" ", "-").replace("%", "")
        if self.pairs:
            text += f"-pairs-{Path(self.pairs).stem}"
        if self.seed != 0:
            text += f"-n{self.seed}"
        return text


@dataclass(frozen=True)
class Grid:
    """A parsed, checked grid file."""

    path: Path
    name: str
    description: str
    manifest: str | None
    methods: tuple[str, ...]
    noise: tuple[Noise, ...]
    seeds: tuple[int, ...]
    pretrained: tuple[str | None, ...]
    fixed: dict[str, Any]
    """Train options with one value."""
    axes: dict[str, tuple[Any, ...]]
    """Train options with a list of values, in file order."""
    per_method: dict[str, dict[str, Any]]
    """``[train.<method>]`` options (one value each)."""
    cam: int = 0


def _err(path: Path, where: str, message: str) -> FernoiseError:
    return FernoiseError(f"{path}: {where}: {message}", flag="GRID")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_type(path: Path, where: str, value: Any, annotation: str) -> Any:
    """``value`` checked against a TrainConfig annotation (``int``, ``float | None``, ...)."""
    allowed = {a.strip() for a in annotation.split("|")}
    ok = (
        ("int" in allowed and _is_int(value))
        or ("float" in allowed and (isinstance(value, float) or _is_int(value)))
        or ("str" in allowed and isinstance(value, str))
        or ("bool" in allowed and isinstance(value, bool))
        or ("None" in allowed and value is None)
        or not allowed & {"int", "float", "str", "bool", "None"}
    )
    if not ok:
        raise _err(path, where, f"expected {annotation}, found {value!r}")
    return float(value) if _is_int(value) and "float" in allowed and "int" not in allowed else value


def _option_name(path: Path, where: str, key: str, known: dict[str, str]) -> str:
    name = key.replace("-", "_")
    if name in AXIS_KEYS:
        raise _err(path, where, f"set {name!r} with the top-level key {AXIS_KEYS[name]!r}")
    if name not in known:
        valid = ", ".join(k for k in sorted(known) if k not in AXIS_KEYS)
        raise _err(path, where, f"unknown train option {key!r}; valid: {valid}")
    return name


def _noise_entries(path: Path, raw: Any) -> list[Noise]:
    if not isinstance(raw, list) or not raw:
        raise _err(path, "noise", 'expected a list such as ["clean", {kind = "sym", rates = [0.1, 0.3]}]')
    kinds = noise_kinds()
    out: list[Noise] = []
    for i, item in enumerate(raw):
        where = f"noise[{i}]"
        if item in ("clean", "none"):
            out.append(Noise())
            continue
        if not isinstance(item, dict):
            raise _err(path, where, f'expected "clean" or a table {{kind = ..., rate = ...}}, found {item!r}')
        unknown = sorted(set(item) - set(NOISE_KEYS))
        if unknown:
            raise _err(path, where, f"unknown key {unknown[0]!r}; valid keys: {', '.join(NOISE_KEYS)}")
        kind = item.get("kind")
        if kind not in kinds:
            raise _err(path, f"{where}.kind", f"unknown noise kind {kind!r}; valid: clean, {', '.join(kinds)}")
        if "rate" in item and "rates" in item:
            raise _err(path, where, "give rate or rates, not both")
        rates = item["rates"] if "rates" in item else [item.get("rate")]
        if not isinstance(rates, list) or not rates:
            raise _err(path, f"{where}.rates", f"expected a list of rates, found {rates!r}")
        seed = item.get("seed", 0)
        if not (seed == "train" or (_is_int(seed) and seed >= 0)):
            raise _err(path, f"{where}.seed", f'expected a non-negative integer or "train", found {seed!r}')
        for r in rates:
            if r is not None and not isinstance(r, int | float) or isinstance(r, bool):
                raise _err(path, f"{where}.rate", f"expected a number in [0, 1), found {r!r}")
            noise = Noise(kind=kind, rate=float(r) if r is not None else None, seed=seed,
                          pairs=item.get("pairs"), matrix=item.get("matrix"), column=item.get("column"))
            _check_noise_params(path, where, noise)
            out.append(noise)
    slugs = [n.slug() for n in out]
    dup = next((s for s in slugs if slugs.count(s) > 1), None)
    if dup:
        raise _err(path, "noise", f"the setting {dup!r} is listed twice")
    return out


def _check_noise_params(path: Path, where: str, noise: Noise) -> None:
    """Build the CorruptParams of ``noise`` (without its files) to check kind, rate and seed."""
    from fernoise.corrupt import CorruptParams

    try:
        CorruptParams(kind=str(noise.kind), rate=noise.rate, seed=noise.seed if _is_int(noise.seed) else 0,
                      column=noise.column,
                      matrix=((1.0,),) if noise.kind == "matrix" and noise.matrix else None)
    except FernoiseError as e:
        flag = (e.flag or "").removeprefix("--")
        key = {"kind": "kind", "rate": "rate", "seed": "seed", "column": "column", "matrix": "matrix",
               "pairs": "pairs"}.get(flag, flag or "noise")
        text = str(e).replace("--rate", "rate").replace("--kind", "kind").replace("--column", "column")
        raise _err(path, f"{where}.{key}", text.replace("--matrix", "matrix").replace("--pairs", "pairs")) from None
    except (TypeError, ValueError) as e:  # a matrix stub of the wrong shape is checked later, with the file
        if noise.kind != "matrix":
            raise _err(path, where, str(e)) from None
    if noise.pairs is not None and not isinstance(noise.pairs, str):
        raise _err(path, f"{where}.pairs", f"expected a file path, found {noise.pairs!r}")


def load_grid(path: str | os.PathLike) -> Grid:
    """Parse and check a grid file (see the module docstring). Raises a one-line FernoiseError
    naming the key at fault and the valid keys or values."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    path = Path(path)
    if not path.is_file():
        raise FernoiseError(f"grid file {path} does not exist; pass a .toml file such as grids/smoke.toml", flag="GRID")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise FernoiseError(f"{path} is not valid TOML ({e})", flag="GRID") from None
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise _err(path, "top level", f"unknown key {unknown[0]!r}; valid keys: {', '.join(TOP_KEYS)}")

    valid_methods = method_names()
    methods = raw.get("methods")
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise _err(path, "methods", f"expected a list of method names from: {', '.join(valid_methods)}")
    for m in methods:
        if m not in valid_methods:
            raise _err(path, "methods", f"unknown method {m!r}; valid: {', '.join(valid_methods)}")
    if len(set(methods)) != len(methods):
        raise _err(path, "methods", "a method is listed twice")

    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) and s >= 0 for s in seeds):
        raise _err(path, "seeds", f"expected a list of non-negative integers, found {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise _err(path, "seeds", "a seed is listed twice")

    pre_raw = raw.get("pretrained", ["none"])
    pre_raw = pre_raw if isinstance(pre_raw, list) else [pre_raw]
    if not pre_raw or not all(isinstance(p, str) and p for p in pre_raw):
        raise _err(path, "pretrained", 'expected a list of "none", "latest" or paths to a file or folder')
    pretrained = tuple(None if p == "none" else p for p in pre_raw)

    noise = _noise_entries(path, raw.get("noise", ["clean"]))

    known = train_fields()
    train_raw = raw.get("train", {})
    if not isinstance(train_raw, dict):
        raise _err(path, "train", "expected a table of `fernoise train` options")
    fixed: dict[str, Any] = {}
    axes: dict[str, tuple[Any, ...]] = {}
    per_method: dict[str, dict[str, Any]] = {}
    for key, value in train_raw.items():
        if isinstance(value, dict):
            if key not in methods:
                raise _err(path, f"train.{key}", f"a table here sets one method's options; {key!r} is not in methods ({', '.join(methods)})")
            opts = {}
            for k, v in value.items():
                name = _option_name(path, f"train.{key}", k, known)
                if isinstance(v, list):
                    raise _err(path, f"train.{key}.{k}", "per-method options take one value (lists are axes of [train])")
                opts[name] = _check_type(path, f"train.{key}.{k}", v, known[name])
            per_method[key] = opts
            continue
        name = _option_name(path, "train", key, known)
        if isinstance(value, list):
            if not value:
                raise _err(path, f"train.{key}", "an empty list of values")
            axes[name] = tuple(_check_type(path, f"train.{key}", v, known[name]) for v in value)
        else:
            fixed[name] = _check_type(path, f"train.{key}", value, known[name])

    eval_raw = raw.get("eval", {})
    if not isinstance(eval_raw, dict):
        raise _err(path, "eval", "expected a table, e.g. [eval] cam = 0")
    bad = sorted(set(eval_raw) - set(EVAL_KEYS))
    if bad:
        raise _err(path, "eval", f"unknown key {bad[0]!r}; valid keys: {', '.join(EVAL_KEYS)}")
    cam = eval_raw.get("cam", 0)
    if not _is_int(cam) or not 0 <= cam <= 64:
        raise _err(path, "eval.cam", f"expected 0..64 Grad-CAM faces, found {cam!r}")

    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise _err(path, "name", f"expected letters, digits, '.', '_' or '-', found {name!r}")
    manifest = raw.get("manifest")
    if manifest is not None and not isinstance(manifest, str):
        raise _err(path, "manifest", f"expected a path, found {manifest!r}")
    description = raw.get("description", "")
    return Grid(path=path, name=name, description=str(description), manifest=manifest, methods=tuple(methods),
                noise=tuple(noise), seeds=tuple(seeds), pretrained=pretrained, fixed=fixed, axes=axes,
                per_method=per_method, cam=cam)


# ----------------------------------------------------------------------------- cells
@dataclass(frozen=True)
class Cell:
    """One training run of the grid and its evaluation."""

    index: int
    method: str
    noise: Noise
    seed: int
    pretrained: str | None
    options: tuple[tuple[str, Any], ...]
    """The swept train options' values (the grid's axes), for display."""
    config: Any
    """The complete :class:`fernoise.train.TrainConfig`."""

    @property
    def id(self) -> str:
        parts = [self.method, self.noise.slug(), f"s{self.seed}"]
        if self.pretrained is not None:
            parts.append("pre-" + Path(self.pretrained).name)
        parts += [f"{k}={v}" for k, v in self.options]
        return re.sub(r"[^A-Za-z0-9._=+-]", "_", ".".join(parts))

    def noise_seed(self) -> int:
        return self.seed if self.noise.seed == "train" else int(self.noise.seed)


def _config_error(grid: Grid, cell_desc: str, e: FernoiseError) -> FernoiseError:
    flag = (e.flag or "").removeprefix("--").replace("-", "_")
    key = AXIS_KEYS.get(flag) or (f"train.{flag}" if flag else "train")
    return _err(grid.path, key, f"{str(e)} (cell {cell_desc})")


def expand(grid: Grid, *, root: Path | None = None) -> list[Cell]:
    """Every cell of ``grid`` in its fixed order, each with a checked TrainConfig. Relative
    pretrained paths are made absolute against ``root`` (the workspace root)."""
    import itertools

    root = root or Workspace().root
    axis_names = list(grid.axes)
    cells: list[Cell] = []
    for seed in grid.seeds:
        for pre in grid.pretrained:
            pre_value = pre
            if pre is not None and pre != "latest" and not Path(pre).is_absolute():
                pre_value = str(root / pre)
            for values in itertools.product(*(grid.axes[a] for a in axis_names)):
                options = tuple(zip(axis_names, values, strict=True))
                for noise in grid.noise:
                    for method in grid.methods:
                        desc = f"{method}, {noise.label()}, seed {seed}" + "".join(f", {k}={v}" for k, v in options)
                        try:
                            cfg = _train_config(method, seed, pre_value, {**grid.fixed, **dict(options)},
                                                grid.per_method.get(method, {}))
                        except FernoiseError as e:
                            raise _config_error(grid, desc, e) from None
                        cells.append(Cell(len(cells), method, noise, seed, pre, options, cfg))
    return cells


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with 1 <= i <= n; None -> ``(1, 1)``."""
    if text is None:
        return 1, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise FernoiseError(f"expected i/n with 1 <= i <= n (e.g. 2/4), found {text!r}", flag="--shard")
    return int(m.group(1)), int(m.group(2))


def shard_cells(cells: Sequence[Cell], shard: int, of: int) -> list[Cell]:
    """The ``shard``-th (1-based) of ``of`` contiguous, disjoint shares of ``cells``: share k
    holds cells ``[(k-1) N / of, k N / of)``, so every cell is in exactly one share and the
    shares differ in size by at most one."""
    n = len(cells)
    return list(cells[(shard - 1) * n // of : shard * n // of])


def parse_gpus(text: str | None) -> list[str] | None:
    """``"0,1,2,3"`` -> ``["0", "1", "2", "3"]`` (CUDA_VISIBLE_DEVICES values); None -> None."""
    if text is None:
        return None
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not gpus or not all(re.fullmatch(r"\d+|GPU-[0-9a-fA-F-]+|MIG-[0-9a-fA-F/-]+", g) for g in gpus):
        raise FernoiseError(f"expected GPU indices or UUIDs separated by commas (e.g. 0,1,2,3), found {text!r}", flag="--gpus")
    if len(set(gpus)) != len(gpus):
        raise FernoiseError(f"a GPU is listed twice in {text!r}", flag="--gpus")
    return gpus


def worker_env(base: dict[str, str], gpu: str | None, workspace: Path) -> dict[str, str]:
    """The environment of one cell's child process: ``CUDA_VISIBLE_DEVICES`` = its GPU (so
    ``cuda`` in the child is that GPU), the workspace, and passive OpenMP waits."""
    env = dict(base)
    env["FERNOISE_WORKSPACE"] = str(workspace)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONUNBUFFERED"] = "1"
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


# ----------------------------------------------------------------------------- state
@dataclass
class CellState:
    """What is known about one cell now (one row of the live table and of table.csv)."""

    cell: Cell
    status: str = "queued"
    hit: bool = False
    run: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    batch: int | None = None
    batches: int | None = None
    images_per_s: float | None = None
    top1: float | None = None
    val_selected: float | None = None
    max_last5: tuple[float, float] | None = None
    reason: str | None = None
    gpu: str | None = None
    visible_devices: str | None = None
    pid: int | None = None
    shard: str = "1/1"
    started: float | None = None
    finished: float | None = None
    spec: str = ""
    host: str = ""

    def progress(self) -> float:
        """Fraction of training done, from the epoch and batch counters (0 when unknown)."""
        if self.status == "done":
            return 1.0
        if not self.epochs or not self.epoch:
            return 0.0
        within = (self.batch or 0) / self.batches if self.batches else 0.0
        return min(1.0, (self.epoch - 1 + within) / self.epochs)

    def to_json(self) -> dict[str, Any]:
        c = self.cell
        return {
            "id": c.id, "index": c.index, "method": c.method, "noise": c.noise.label(), "noise_spec": asdict(c.noise),
            "seed": c.seed, "pretrained": c.pretrained, "options": dict(c.options), "status": self.status,
            "hit": self.hit, "run": self.run, "epoch": self.epoch, "epochs": self.epochs,
            "images_per_s": self.images_per_s, "top1": self.top1, "val_selected_test_acc": self.val_selected,
            "test_max_last5": list(self.max_last5) if self.max_last5 else None, "reason": self.reason,
            "gpu": self.gpu, "visible_devices": self.visible_devices, "pid": self.pid, "shard": self.shard,
            "host": self.host, "started": self.started, "finished": self.finished, "spec": self.spec,
        }


@dataclass
class Sweep:
    """A checked sweep, ready to run: the grid, the manifest, all cells and this shard's."""

    grid: Grid
    manifest: Path
    manifest_key: str
    workspace: Workspace
    runs_dir: Path
    cells: list[Cell]
    mine: list[Cell]
    shard: tuple[int, int]
    state_dir: Path
    states: dict[int, CellState] = field(default_factory=dict)

    def spec(self, cell: Cell) -> str:
        """What the cell's result depends on; a cell file of another spec is stale."""
        cfg = {k: v for k, v in asdict(cell.config).items() if k != "workers"}
        return dict_hash({"config": cfg, "noise": asdict(cell.noise), "manifest": self.manifest_key,
                          "cam": self.grid.cam})[:16]

    def cell_file(self, cell: Cell) -> Path:
        return self.state_dir / "cells" / f"{cell.id}.json"

    def log_file(self, cell: Cell) -> Path:
        return self.state_dir / "logs" / f"{cell.id}.log"


def _check_manifest(grid: Grid, manifest: Path) -> str:
    from fernoise.manifest import read_meta

    if manifest.is_dir():
        manifest = manifest / "manifest.parquet"
    if not manifest.is_file():
        raise FernoiseError(f"manifest {manifest} does not exist; pass a clean aligned manifest .parquet", flag="MANIFEST")
    meta = read_meta(manifest)
    import pyarrow.parquet as pq

    names = pq.read_schema(manifest).names
    if "label_clean" in names:
        raise FernoiseError(
            f"{manifest} is already corrupted (it has label_clean); a sweep adds its own noise to the clean "
            "aligned manifest: pass that one", flag="MANIFEST")
    if not meta.get("classes"):
        raise FernoiseError(f"{manifest} has no class list in its metadata; make it with `fernoise align`", flag="MANIFEST")
    for i, n in enumerate(grid.noise):
        if n.kind == "column" and n.column not in names:
            raise _err(grid.path, f"noise[{i}].column", f"{manifest.name} has no column {n.column!r}")
    from fernoise.cache import file_sha256

    return meta.get("key") or file_sha256(manifest)


def _check_files(grid: Grid, root: Path) -> None:
    from fernoise.corrupt_stage import load_matrix, load_pairs

    for i, n in enumerate(grid.noise):
        where = f"noise[{i}]"
        try:
            if n.pairs is not None:
                load_pairs(_abs(n.pairs, root))
            if n.matrix is not None:
                load_matrix(_abs(n.matrix, root))
        except FernoiseError as e:
            raise _err(grid.path, where, e.one_line()) from None
    ws = Workspace(root)
    for p in grid.pretrained:
        if p is None:
            continue
        if p == "latest":
            if "pretrain" not in ws.read()["stages"]:
                raise _err(grid.path, "pretrained", f'"latest" but {ws.lock_path} records no pretrain stage; run `fernoise pretrain` first')
        elif not Path(_abs(p, root)).exists():
            raise _err(grid.path, "pretrained", f"{_abs(p, root)} does not exist; valid: none, latest, a file or folder")


def _abs(p: str, root: Path) -> str:
    return p if Path(p).is_absolute() else str(root / p)


def plan(grid_path: str | os.PathLike, manifest: str | os.PathLike | None = None, *,
         workspace: Workspace | None = None, shard: tuple[int, int] = (1, 1)) -> Sweep:
    """Load and check the grid, resolve the manifest (``manifest``, else the grid's, else the
    workspace's latest ``align`` output), build every cell. Writes nothing."""
    ws = workspace or Workspace()
    grid = load_grid(grid_path)
    if manifest is not None:
        path = Path(manifest)
    elif grid.manifest is not None:
        path = Path(_abs(grid.manifest, ws.root))
    else:
        path = ws.latest("align", what="manifest", flag="MANIFEST")
    if path.is_dir():
        path = path / "manifest.parquet"
    if not path.is_file() and manifest is None and grid.manifest is not None:
        raise _err(grid.path, "manifest", f"{path} does not exist; make it with `fernoise align` or fix the path")
    key = _check_manifest(grid, path)
    _check_files(grid, ws.root)
    cells = expand(grid, root=ws.root)
    mine = shard_cells(cells, *shard)
    runs = ws.root / "runs"
    return Sweep(grid=grid, manifest=path.resolve(), manifest_key=key, workspace=ws, runs_dir=runs.resolve(),
                 cells=cells, mine=mine, shard=shard, state_dir=ws.root / "sweeps" / grid.name)


# ----------------------------------------------------------------------------- file lock
@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive fcntl lock on ``<path>.lk`` (cache.file_lock when this fernoise has it)."""
    from fernoise import cache

    if hasattr(cache, "file_lock"):
        with cache.file_lock(path):
            yield
        return
    import fcntl

    side = Path(f"{path}.lk")
    side.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(side, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- running
Update = Callable[["Sweep"], None]


def _accuracies(state: CellState, report: dict[str, Any]) -> None:
    hist = report.get("history") or {}
    vs = hist.get("val_selected") or {}
    ml = hist.get("test_max_last5") or {}
    state.top1 = report.get("top1")
    state.val_selected = vs.get("test_acc")
    state.max_last5 = (ml["max"], ml["last"]) if ml.get("max") is not None else None


class _Corrupter:
    """The noisy manifest of each noise setting, made once (under a lock shared by shards)."""

    def __init__(self, sweep: Sweep):
        self.sweep = sweep
        self.done: dict[tuple, Path | FernoiseError] = {}

    def __call__(self, cell: Cell) -> Path:
        n = cell.noise
        if n.kind is None:
            return self.sweep.manifest
        key = (n, cell.noise_seed())
        if key not in self.done:
            from fernoise.corrupt_stage import run_corrupt

            root = self.sweep.workspace.root
            try:
                with _file_lock(root / ".fernoise" / "sweep-corrupt"):
                    res = run_corrupt(self.sweep.manifest, kind=n.kind, rate=n.rate, seed=cell.noise_seed(),
                                      pairs_file=_abs(n.pairs, root) if n.pairs else None,
                                      matrix_file=_abs(n.matrix, root) if n.matrix else None,
                                      column=n.column, workspace=self.sweep.workspace)
                self.done[key] = res.output
            except FernoiseError as e:
                self.done[key] = e
        out = self.done[key]
        if isinstance(out, FernoiseError):
            raise out
        return out


def check_done(sweep: Sweep, cell: Cell, manifest: Path, state: CellState) -> bool:
    """True (and ``state`` filled in) when the cell's run and evaluation are finished and
    intact, decided from the run index alone (no torch)."""
    from fernoise import runindex

    hit = runindex.lookup(manifest, cell.config, runs_dir=sweep.runs_dir, workspace=sweep.workspace)
    if hit is None:
        return False
    report = runindex.lookup_eval(hit.output, cam=sweep.grid.cam, workspace=sweep.workspace)
    if report is None:
        return False
    state.status, state.hit, state.run = "done", True, str(hit.output)
    state.epochs = state.epoch = cell.config.epochs
    _accuracies(state, report)
    return True


def _write_cell(sweep: Sweep, state: CellState) -> None:
    atomic_write_json(sweep.cell_file(state.cell), state.to_json())


def _stamp_state(sweep: Sweep, state: CellState) -> None:
    import socket

    state.shard = f"{sweep.shard[0]}/{sweep.shard[1]}"
    state.spec = sweep.spec(state.cell)
    state.host = socket.gethostname()


def run(sweep: Sweep, *, gpus: Sequence[str] | None = None, update: Update | None = None,
        dry_run: bool = False, python: str | None = None) -> list[CellState]:
    """Run this shard's cells: done ones are hits, the rest run in child processes (one per
    GPU in ``gpus``, else one at a time), a failed cell never stops the others. ``update`` is
    called with the sweep on every change and about twice a second. Returns this shard's
    states; with ``dry_run`` only checks which cells are done (nothing is written)."""
    say = update or (lambda s: None)
    lock = threading.Lock()
    sweep.states = {c.index: CellState(c) for c in sweep.mine}
    for st in sweep.states.values():
        _stamp_state(sweep, st)
    corrupt = _Corrupter(sweep)
    pending: list[tuple[CellState, Path]] = []
    for st in sweep.states.values():
        cell = st.cell
        try:
            if dry_run:
                manifest = _existing_noisy(sweep, cell)
                if manifest is not None:
                    check_done_readonly(sweep, cell, manifest, st)
                continue
            manifest = corrupt(cell)
        except FernoiseError as e:
            st.status, st.reason = "failed", e.one_line()
            _write_cell(sweep, st)
            say(sweep)
            continue
        if check_done(sweep, cell, manifest, st):
            _write_cell(sweep, st)
        else:
            pending.append((st, manifest))
        say(sweep)
    if dry_run:
        return list(sweep.states.values())

    slots: queue.Queue[str | None] = queue.Queue()
    for g in gpus or [None]:
        slots.put(g)
    todo: queue.Queue[tuple[CellState, Path]] = queue.Queue()
    for item in pending:
        todo.put(item)
    children: dict[int, subprocess.Popen] = {}

    def slot_loop() -> None:
        while True:
            try:
                st, manifest = todo.get_nowait()
            except queue.Empty:
                return
            gpu = slots.get()
            try:
                _run_child(sweep, st, manifest, gpu, lock, children, python or sys.executable)
            finally:
                slots.put(gpu)

    threads = [threading.Thread(target=slot_loop, daemon=True) for _ in range(len(gpus or [None]))]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=0.5)
            with lock:
                say(sweep)
    except BaseException:
        for proc in list(children.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        raise
    write_table(sweep)
    say(sweep)
    return list(sweep.states.values())


def _existing_noisy(sweep: Sweep, cell: Cell) -> Path | None:
    """The noisy manifest of the cell if the corrupt stage already wrote it (dry run)."""
    if cell.noise.kind is None:
        return sweep.manifest
    from fernoise.corrupt import CorruptParams
    from fernoise.corrupt_stage import output_name

    n = cell.noise
    if n.kind == "matrix":
        from fernoise.cache import file_sha256

        sha = file_sha256(_abs(str(n.matrix), sweep.workspace.root))
        params = CorruptParams(kind="matrix", seed=cell.noise_seed(), matrix=((1.0,),))
        out = output_name(sweep.manifest, params, matrix_sha256=sha)
    else:
        params = CorruptParams(kind=str(n.kind), rate=n.rate, seed=cell.noise_seed(), column=n.column)
        out = output_name(sweep.manifest, params)
    return out if out.is_file() else None


def check_done_readonly(sweep: Sweep, cell: Cell, manifest: Path, state: CellState) -> bool:
    from fernoise import runindex

    hit = runindex.lookup(manifest, cell.config, runs_dir=sweep.runs_dir)
    report = runindex.lookup_eval(hit.output, cam=sweep.grid.cam) if hit else None
    if report is None:
        return False
    state.status, state.hit, state.run = "done", True, str(hit.output)
    _accuracies(state, report)
    return True


def _run_child(sweep: Sweep, st: CellState, manifest: Path, gpu: str | None, lock: threading.Lock,
               children: dict[int, subprocess.Popen], python: str) -> None:
    """One cell in a child process (:mod:`fernoise.sweepcell`): JSON events on its stdout,
    applied to ``st`` under ``lock`` (the main thread shows them)."""
    cell = st.cell
    spec = {
        "manifest": str(manifest), "config": asdict(cell.config), "runs_dir": str(sweep.runs_dir),
        "workspace": str(sweep.workspace.root), "cam": sweep.grid.cam, "parent": os.getpid(),
    }
    log = sweep.log_file(cell)
    log.parent.mkdir(parents=True, exist_ok=True)
    with lock:
        st.status, st.gpu, st.started, st.reason = "running", gpu, time.time(), None
    env = worker_env(dict(os.environ), gpu, sweep.workspace.root)
    with open(log, "ab") as err:
        proc = subprocess.Popen([python, "-m", "fernoise.sweepcell"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, env=env, cwd=sweep.workspace.root)
        with lock:
            st.pid = proc.pid
            children[proc.pid] = proc
            _write_cell(sweep, st)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(spec).encode())
        proc.stdin.close()
        final: dict[str, Any] | None = None
        for raw in io.TextIOWrapper(proc.stdout, encoding="utf-8", errors="replace"):
            try:
                ev = json.loads(raw)
            except ValueError:
                continue
            with lock:
                final = _apply_event(st, ev) or final
        rc = proc.wait()
    with lock:
        children.pop(proc.pid, None)
        st.finished = time.time()
        if rc == 0 and final is not None and final.get("event") == "done":
            st.status = "done"
        else:
            st.status = "failed"
            if not st.reason:
                st.reason = f"the cell's process exited with code {rc}{_log_tail(log)}; log: {log}"
        _write_cell(sweep, st)


def _log_tail(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return f" ({lines[-1].strip()[:200]})" if lines else ""


def _apply_event(st: CellState, ev: dict[str, Any]) -> dict[str, Any] | None:
    kind = ev.get("event")
    if kind == "start":
        st.visible_devices = ev.get("cuda_visible_devices")
    elif kind == "epoch_start":
        st.epoch, st.epochs, st.batch, st.batches = ev.get("epoch"), ev.get("epochs"), 0, ev.get("batches")
    elif kind == "batch":
        st.batch, st.batches = ev.get("done"), ev.get("total")
        st.images_per_s = ev.get("images_per_s")
    elif kind == "epoch_end":
        m = ev.get("metrics") or {}
        st.images_per_s = m.get("images_per_s", st.images_per_s)
        st.batch = st.batches
    elif kind == "trained":
        st.run, st.hit = ev.get("run"), bool(ev.get("hit"))
    elif kind == "done":
        st.run = ev.get("run", st.run)
        _accuracies(st, ev.get("eval") or {})
        if st.epochs is None:
            st.epoch = st.epochs = ev.get("epochs")
        return ev
    elif kind == "error":
        st.reason = ev.get("message")
        return ev
    return None


# ----------------------------------------------------------------------------- the table
def eta_seconds(sweep: Sweep, slots: int = 1) -> float | None:
    """Seconds until this shard's cells are done: each running cell's elapsed / progress,
    queued cells at the mean duration of the cells run so far (or of the running ones'
    projections), spread over ``slots`` parallel workers. None before anything is known."""
    now = time.time()
    states = list(sweep.states.values())
    ran = [s.finished - s.started for s in states if s.status == "done" and not s.hit and s.started and s.finished]
    running = [s for s in states if s.status == "running" and s.started]
    projected = []
    remaining = 0.0
    for s in running:
        frac = s.progress()
        if frac > 0.02:
            total = (now - s.started) / frac
            projected.append(total)
            remaining += max(0.0, total - (now - s.started))
    per_cell = (sum(ran) / len(ran)) if ran else (sum(projected) / len(projected) if projected else None)
    queued = sum(1 for s in states if s.status == "queued")
    if per_cell is None:
        return 0.0 if not queued and not running else None
    return (remaining + queued * per_cell) / max(1, slots)


TABLE_COLUMNS = ("index", "id", "method", "noise", "seed", "pretrained", "options", "status", "top1",
                 "val_selected_test_acc", "test_max", "test_last5", "run", "shard", "reason")


def read_cells(sweep: Sweep) -> list[dict[str, Any]]:
    """Every cell of the grid as its cell file says (``status`` ``queued`` for a cell without a
    file or with a file of another spec), in grid order."""
    rows = []
    for cell in sweep.cells:
        data = read_json(sweep.cell_file(cell))
        spec = sweep.spec(cell)
        if not isinstance(data, dict) or data.get("spec") != spec:
            st = CellState(cell)
            st.spec = spec
            data = st.to_json()
        rows.append(data)
    return rows


def table_rows(sweep: Sweep) -> list[dict[str, Any]]:
    out = []
    for d in read_cells(sweep):
        ml = d.get("test_max_last5") or [None, None]
        out.append({
            "index": d["index"], "id": d["id"], "method": d["method"], "noise": d["noise"], "seed": d["seed"],
            "pretrained": d.get("pretrained") or "none",
            "options": " ".join(f"{k}={v}" for k, v in (d.get("options") or {}).items()),
            "status": d["status"], "top1": d.get("top1"), "val_selected_test_acc": d.get("val_selected_test_acc"),
            "test_max": ml[0], "test_last5": ml[1], "run": d.get("run"), "shard": d.get("shard"),
            "reason": d.get("reason") or "",
        })
    return out


def _pct(v: Any) -> str:
    return "" if v is None else f"{100 * float(v):.1f}"


def write_table(sweep: Sweep) -> tuple[Path, Path]:
    """``table.csv`` and ``table.md`` of every cell, from the cell files, under a file lock
    (the last process to finish writes the table every shard's cells are in)."""
    csv_path, md_path = sweep.state_dir / "table.csv", sweep.state_dir / "table.md"
    with _file_lock(sweep.state_dir / "table"):
        rows = table_rows(sweep)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r[k] is None else r[k]) for k in TABLE_COLUMNS})
        atomic_write_text(csv_path, buf.getvalue())
        head = ["#", "method", "noise", "seed", "pretrained", "options", "status", "top-1 %", "val-sel %",
                "max / last-5 %", "reason"]
        lines = [f"# sweep {sweep.grid.name}", "", f"grid: `{sweep.grid.path}`  manifest: `{sweep.manifest}`", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            ml = f"{_pct(r['test_max'])} / {_pct(r['test_last5'])}" if r["test_max"] is not None else ""
            cells = [str(r["index"] + 1), r["method"], r["noise"], str(r["seed"]), r["pretrained"], r["options"],
                     r["status"], _pct(r["top1"]), _pct(r["val_selected_test_acc"]), ml, r["reason"].replace("|", "/")]
            lines.append("| " + " | ".join(cells) + " |")
        atomic_write_text(md_path, "\n".join(lines) + "\n")
    return csv_path, md_path


def summary(states: Sequence[CellState]) -> dict[str, int]:
    """Counts per status, and ``hits`` (done without running)."""
    out = {s: 0 for s in STATUSES}
    for st in states:
        out[st.status] += 1
    out["hits"] = sum(1 for st in states if st.status == "done" and st.hit)
    return out


def check_gpu_devices(cells: Sequence[Cell], gpus: Sequence[str] | None) -> None:
    """Under ``--gpus`` each child sees one GPU as ``cuda``/``cuda:0``: an explicit
    ``cuda:N`` with N > 0 cannot exist there, so it is a one-line error up front."""
    for c in cells if gpus else ():
        dev = c.config.device
        if dev.startswith("cuda:") and dev != "cuda:0":
            raise FernoiseError(
                f"cell {c.id} asks for {dev}, but with --gpus each cell sees one GPU (cuda:0); "
                'use device = "auto" or "cuda" in the grid', flag="--gpus")
