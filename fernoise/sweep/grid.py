"""Grid files for `fernoise sweep`: parse and check them, expand them into cells, share them.

A grid file (TOML; ``grids/*.toml``) declares a study over one clean aligned manifest::

    name = "table5"                       # state: <workspace>/sweeps/<name>/<manifest tag>/ (default: file stem)
    manifest = "out/manifest.parquet"     # optional; else the command's MANIFEST, else the latest `align`
                                          # a list of manifests is an axis (one cell per manifest)
    folds = "all"                         # optional: the folds of a `fernoise split` of the manifest
                                          # ("all" or a list of fold indices such as [0, 2]): an axis
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

A cell is one (seed, manifest, pretrained, train-option values, noise, method); cells are ordered in that
nesting (method innermost, so each noise setting's row of methods fills first, and seed 0 of
every cell comes before seed 1). Paths in the file are relative to the workspace root. The file
is UTF-8, with or without a byte-order mark. A grid has at most :data:`MAX_CELLS` (10,000) cells,
counted from its axes before any cell is built; a larger study is several grid files.

A cell's id (its state and log file names) is
``method.noise.s<seed>[.<manifest tag>][.pre-<file>][.option=value]`` (the manifest tag, e.g.
``fold-0``, only when the grid has several manifests);
two starts or matrix/pairs files of one file name in different folders get a hash of their path
in the grid appended, and ids longer than 150 characters are shortened with a hash
(:func:`cell_names`).
Everything is checked before anything runs (:func:`load_grid`, :func:`expand`; the manifest in :func:`fernoise.sweep.runner.plan`): an unknown key or value is a
one-line error naming the key and the valid ones, and every cell's TrainConfig and noise
parameters are built.

Shares (:func:`shard_cells`) are contiguous, disjoint blocks of the cell list: the same on
every machine, so a job array needs no scheduler of ours.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeGuard

from fernoise.cache import Workspace
from fernoise.errors import FernoiseError
from fernoise.shards import parse_shard  # noqa: F401 - `sweep.parse_shard`, as before

TOP_KEYS = (
    "description",
    "eval",
    "folds",
    "manifest",
    "methods",
    "name",
    "noise",
    "pretrained",
    "seeds",
    "train",
)
NOISE_KEYS = ("column", "kind", "matrix", "pairs", "rate", "rates", "seed")
EVAL_KEYS = ("cam",)
AXIS_KEYS = {
    "method": "methods",
    "seed": "seeds",
    "pretrained": "pretrained",
}  # set at the top level
MAX_CELLS = 10_000
"""Most cells one grid file may have (each a training run); checked before any cell is built."""


# ----------------------------------------------------------------------------- registries
def method_names() -> tuple[str, ...]:
    """The method names ``fernoise train`` accepts: the ``fernoise.methods`` registry."""
    from fernoise import methods

    return tuple(methods.names())


def noise_kinds() -> tuple[str, ...]:
    from fernoise.corrupt.kinds import KINDS

    return tuple(KINDS)


def train_fields() -> dict[str, str]:
    """TrainConfig field name -> its annotation (a string such as ``"float | None"``);
    ``method_params`` is set through the methods' own options (:func:`method_options`)."""
    from fernoise.train.stage import TrainConfig

    return {f.name: str(f.type) for f in fields(TrainConfig) if f.name != "method_params"}


def method_options(method: str) -> dict[str, str]:
    """The method's own options (its ``Params`` fields: name -> annotation) when the
    ``fernoise.methods`` registry exists, else none (they are TrainConfig fields then)."""
    try:
        from fernoise import methods

        cls = methods.get(method)
    except (ImportError, AttributeError, FernoiseError):
        return {}
    params = getattr(cls, "Params", None)
    return {f.name: str(f.type) for f in fields(params)} if params is not None else {}


def method_aliases(method: str) -> dict[str, str]:
    """How a grid may name the method's own options -> the ``Params`` field: the field name
    (``margin``) and the ``fernoise train`` flag without its dashes (``scn-margin``/``scn_margin``)."""
    try:
        from fernoise import methods

        params = getattr(methods.get(method), "Params", None)
    except (ImportError, AttributeError, FernoiseError):
        return {}
    out: dict[str, str] = {}
    for f in fields(params) if params is not None else ():
        out[f.name] = f.name
        flag = f.metadata.get("flag")
        if flag:
            out[flag.lstrip("-").replace("-", "_")] = f.name
    return out


def make_method_params(method: str, values: dict[str, Any]) -> Any:
    """The method's ``Params`` from ``{field: value}`` through the registry."""
    from fernoise import methods

    return methods.get(method).Params(**values)


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
    """The first (or only) manifest named in the file."""
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
    method_keys: frozenset[str] = frozenset()
    """Option names that are a method's own (its ``Params``), not TrainConfig fields."""
    cam: int = 0
    manifests: tuple[str, ...] = ()
    """Every manifest named in the file (``manifest = [...]``: an axis), in file order."""
    folds: str | tuple[int, ...] | None = None
    """``"all"`` or fold indices: the folds of a ``fernoise split`` of the manifest, an axis."""


def grid_error(path: Path, where: str, message: str) -> FernoiseError:
    return FernoiseError(f"{path}: {where}: {message}", flag="GRID")


def _is_int(v: Any) -> TypeGuard[int]:
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
    if not ok:  # TOML has no null: None is never what to write
        shown = " or ".join(a.strip() for a in annotation.split("|") if a.strip() != "None")
        raise grid_error(path, where, f"expected {shown}, found {value!r}")
    return float(value) if _is_int(value) and "float" in allowed and "int" not in allowed else value


def _option(
    path: Path, where: str, key: str, known: dict[str, str], methods: Sequence[str]
) -> tuple[str, str, bool]:
    """``(name, annotation, is_method_option)`` of a train option key (``batch-size`` or
    ``batch_size``, or a method's own option such as ``k``), for every method in ``methods``."""
    name = key.replace("-", "_")
    if name in AXIS_KEYS:
        raise grid_error(path, where, f"set {name!r} with the top-level key {AXIS_KEYS[name]!r}")
    if name in known:
        return name, known[name], False
    own = {m: method_options(m) for m in methods}
    aliases = {m: method_aliases(m) for m in methods}
    having = [m for m in methods if name in aliases[m]]
    if having and len(having) == len(methods):
        field_name = aliases[having[0]][name]
        return field_name, own[having[0]][field_name], True
    if having:
        others = ", ".join(m for m in methods if m not in having)
        raise grid_error(
            path,
            where,
            f"{key!r} is an option of {', '.join(having)}, not of {others}; "
            f"set it under [train.{having[0]}]",
        )
    extra = sorted({o for m in methods for o in own[m]})
    valid = ", ".join([k for k in sorted(known) if k not in AXIS_KEYS] + extra)
    raise grid_error(path, where, f"unknown train option {key!r}; valid: {valid}")


def _noise_entries(path: Path, raw: Any) -> list[Noise]:
    if not isinstance(raw, list) or not raw:
        raise grid_error(
            path, "noise", 'expected a list such as ["clean", {kind = "sym", rates = [0.1, 0.3]}]'
        )
    kinds = noise_kinds()
    out: list[Noise] = []
    for i, item in enumerate(raw):
        where = f"noise[{i}]"
        if item in ("clean", "none"):
            out.append(Noise())
            continue
        if not isinstance(item, dict):
            raise grid_error(
                path,
                where,
                f'expected "clean" or a table {{kind = ..., rate = ...}}, found {item!r}',
            )
        unknown = sorted(set(item) - set(NOISE_KEYS))
        if unknown:
            raise grid_error(
                path, where, f"unknown key {unknown[0]!r}; valid keys: {', '.join(NOISE_KEYS)}"
            )
        kind = item.get("kind")
        if kind not in kinds:
            raise grid_error(
                path,
                f"{where}.kind",
                f"unknown noise kind {kind!r}; valid: clean, {', '.join(kinds)}",
            )
        if "rate" in item and "rates" in item:
            raise grid_error(path, where, "give rate or rates, not both")
        rates = item["rates"] if "rates" in item else [item.get("rate")]
        if not isinstance(rates, list) or not rates:
            raise grid_error(path, f"{where}.rates", f"expected a list of rates, found {rates!r}")
        seed = item.get("seed", 0)
        if not (seed == "train" or (_is_int(seed) and seed >= 0)):
            raise grid_error(
                path, f"{where}.seed", f'expected a non-negative integer or "train", found {seed!r}'
            )
        for r in rates:
            if r is not None and not isinstance(r, int | float) or isinstance(r, bool):
                raise grid_error(path, f"{where}.rate", f"expected a number in [0, 1), found {r!r}")
            noise = Noise(
                kind=kind,
                rate=float(r) if r is not None else None,
                seed=seed,
                pairs=item.get("pairs"),
                matrix=item.get("matrix"),
                column=item.get("column"),
            )
            _check_noise_params(path, where, noise)
            out.append(noise)
    seen: set[Noise] = set()
    dup = None
    for n in out:
        if n in seen:
            dup = n
            break
        seen.add(n)
    if dup:  # the very same setting; two matrix or pairs files of one name are two settings
        raise grid_error(path, "noise", f"the setting {dup.slug()!r} is listed twice")
    return out


def _check_noise_params(path: Path, where: str, noise: Noise) -> None:
    """Build the CorruptParams of ``noise`` (without its files) to check kind, rate and seed."""
    from fernoise.corrupt.kinds import CorruptParams

    try:
        CorruptParams(
            kind=str(noise.kind),
            rate=noise.rate,
            seed=noise.seed if _is_int(noise.seed) else 0,
            column=noise.column,
            matrix=((1.0,),) if noise.kind == "matrix" and noise.matrix else None,
        )
    except FernoiseError as e:
        flag = (e.flag or "").removeprefix("--")
        key = {
            "kind": "kind",
            "rate": "rate",
            "seed": "seed",
            "column": "column",
            "matrix": "matrix",
            "pairs": "pairs",
        }.get(flag, flag or "noise")
        text = (
            str(e).replace("--rate", "rate").replace("--kind", "kind").replace("--column", "column")
        )
        raise grid_error(
            path, f"{where}.{key}", text.replace("--matrix", "matrix").replace("--pairs", "pairs")
        ) from None
    except (
        TypeError,
        ValueError,
    ) as e:  # a matrix stub of the wrong shape is checked later, with the file
        if noise.kind != "matrix":
            raise grid_error(path, where, str(e)) from None
    if noise.pairs is not None and not isinstance(noise.pairs, str):
        raise grid_error(path, f"{where}.pairs", f"expected a file path, found {noise.pairs!r}")


def shipped_grids() -> list[str]:
    """The names of the grids shipped in the package (``fernoise/grids/NAME.toml``)."""
    from importlib.resources import files

    folder = files("fernoise").joinpath("grids")
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def resolve_grid(path: str | os.PathLike) -> Path:
    """A grid file: ``path`` when it exists, else the shipped grid of that name (``smoke``,
    ``paper-table5``, with or without ``.toml``); a one-line error listing the shipped ones."""
    p = Path(path)
    if p.exists():
        return p
    from importlib.resources import files

    name = p.name[: -len(".toml")] if p.name.endswith(".toml") else p.name
    if p.parent == Path(".") or p.parent == Path("grids"):
        shipped = Path(str(files("fernoise").joinpath("grids", f"{name}.toml")))
        if shipped.is_file():
            return shipped
    raise FernoiseError(
        f"no grid file {p} and no shipped grid {name!r}; shipped grids: {', '.join(shipped_grids())} "
        "(e.g. `fernoise sweep smoke`), or pass a .toml file",
        flag="GRID",
    )


def load_grid(path: str | os.PathLike) -> Grid:
    """Parse and check a grid file, or a shipped grid named by name (see the module docstring).
    Raises a one-line FernoiseError naming the key at fault and the valid keys or values."""
    path = resolve_grid(path)
    raw = _read_toml(path)
    methods = _methods(path, raw)
    seeds = _seeds(path, raw)
    pretrained = _pretrained(path, raw)
    noise = _noise_entries(path, raw.get("noise", ["clean"]))
    train = _train_options(path, raw.get("train", {}), methods)
    cam = _cam(path, raw.get("eval", {}))
    manifests = _manifests(path, raw.get("manifest"))
    folds = _folds(path, raw.get("folds"), manifests)
    _check_size(
        path,
        {
            "manifests": max(1, len(manifests), len(folds) if isinstance(folds, tuple) else 1),
            "methods": len(methods),
            "seeds": len(seeds),
            "pretrained": len(pretrained),
            "noise": len(noise),
            **{f"train.{k}": len(v) for k, v in train.axes.items()},
        },
    )
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise grid_error(path, "name", f"expected letters, digits, '.', '_' or '-', found {name!r}")
    description = raw.get("description", "")
    return Grid(
        path=path,
        name=name,
        description=str(description),
        manifest=manifests[0] if manifests else None,
        methods=tuple(methods),
        noise=tuple(noise),
        seeds=tuple(seeds),
        pretrained=pretrained,
        fixed=train.fixed,
        axes=train.axes,
        per_method=train.per_method,
        method_keys=frozenset(train.method_keys),
        cam=cam,
        manifests=manifests,
        folds=folds,
    )


def _manifests(path: Path, raw: Any) -> tuple[str, ...]:
    """``manifest``: a path, or a list of paths (each once): an axis of the grid."""
    if raw is None:
        return ()
    items = raw if isinstance(raw, list) else [raw]
    if not items or not all(isinstance(m, str) and m for m in items):
        raise grid_error(path, "manifest", f"expected a path or a list of paths, found {raw!r}")
    if len(set(items)) != len(items):
        raise grid_error(path, "manifest", "a manifest is listed twice")
    return tuple(items)


def _folds(path: Path, raw: Any, manifests: tuple[str, ...]) -> str | tuple[int, ...] | None:
    """``folds``: ``"all"`` or a list of fold indices (each once) of one manifest's split."""
    if raw is None:
        return None
    if len(manifests) > 1:
        raise grid_error(
            path, "folds", "folds are those of one manifest's split; name one manifest"
        )
    if raw == "all":
        return "all"
    if (
        not isinstance(raw, list)
        or not raw
        or not all(_is_int(i) and i >= 0 for i in raw)
        or len(set(raw)) != len(raw)
    ):
        raise grid_error(
            path, "folds", f'expected "all" or a list of distinct fold indices, found {raw!r}'
        )
    return tuple(raw)


def _read_toml(path: Path) -> dict[str, Any]:
    """The grid file's top-level table (UTF-8, with or without a BOM), its keys checked."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    if not path.is_file():
        raise FernoiseError(
            f"grid file {path} does not exist; pass a .toml file or a shipped grid's name ({', '.join(shipped_grids())})",
            flag="GRID",
        )
    try:
        raw = tomllib.loads(
            path.read_text(encoding="utf-8-sig")
        )  # -sig: Windows editors write a BOM
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise FernoiseError(f"{path} is not valid TOML ({e})", flag="GRID") from None
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise grid_error(
            path, "top level", f"unknown key {unknown[0]!r}; valid keys: {', '.join(TOP_KEYS)}"
        )
    return raw


def _methods(path: Path, raw: dict[str, Any]) -> list[str]:
    """``methods``: registered method names, each once."""
    valid_methods = method_names()
    methods = raw.get("methods")
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise grid_error(
            path, "methods", f"expected a list of method names from: {', '.join(valid_methods)}"
        )
    for m in methods:
        if m not in valid_methods:
            raise grid_error(
                path, "methods", f"unknown method {m!r}; valid: {', '.join(valid_methods)}"
            )
    if len(set(methods)) != len(methods):
        raise grid_error(path, "methods", "a method is listed twice")
    return methods


def _seeds(path: Path, raw: dict[str, Any]) -> list[int]:
    """``seeds`` (default ``[0]``): non-negative integers, each once."""
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) and s >= 0 for s in seeds):
        raise grid_error(
            path, "seeds", f"expected a list of non-negative integers, found {seeds!r}"
        )
    if len(set(seeds)) != len(seeds):
        raise grid_error(path, "seeds", "a seed is listed twice")
    return seeds


def _pretrained(path: Path, raw: dict[str, Any]) -> tuple[str | None, ...]:
    """``pretrained`` (default ``["none"]``, one value allowed): None for ``none``, else the
    start as written, each once."""
    pre_raw = raw.get("pretrained", ["none"])
    pre_raw = pre_raw if isinstance(pre_raw, list) else [pre_raw]
    if not pre_raw or not all(isinstance(p, str) and p for p in pre_raw):
        raise grid_error(
            path, "pretrained", 'expected a list of "none", "latest" or paths to a file or folder'
        )
    pretrained = tuple(None if p == "none" else p for p in pre_raw)
    if len(set(pretrained)) != len(pretrained):
        raise grid_error(path, "pretrained", "a start is listed twice")
    return pretrained


@dataclass
class _TrainOptions:
    """The ``[train]`` table, checked: one-value options, axes, per-method tables, and which
    option names are a method's own."""

    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)
    axes: dict[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)
    per_method: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    method_keys: set[str] = dataclasses.field(default_factory=set)


def _train_options(path: Path, train_raw: Any, methods: list[str]) -> _TrainOptions:
    """``[train]``: each key a TrainConfig field or an option of every method (a list of
    values is an axis), each ``[train.<method>]`` table one value per option of that method."""
    known = train_fields()
    if not isinstance(train_raw, dict):
        raise grid_error(path, "train", "expected a table of `fernoise train` options")
    out = _TrainOptions()
    for key, value in train_raw.items():
        if isinstance(value, dict):
            out.per_method[key] = _method_table(path, key, value, known, methods, out.method_keys)
            continue
        name, annotation, own = _option(path, "train", key, known, methods)
        if own:
            out.method_keys.add(name)
        if isinstance(value, list):
            if not value:
                raise grid_error(path, f"train.{key}", "an empty list of values")
            out.axes[name] = tuple(_check_type(path, f"train.{key}", v, annotation) for v in value)
        else:
            out.fixed[name] = _check_type(path, f"train.{key}", value, annotation)
    return out


def _method_table(
    path: Path,
    method: str,
    table: dict[str, Any],
    known: dict[str, str],
    methods: list[str],
    method_keys: set[str],
) -> dict[str, Any]:
    """``[train.<method>]``: one value per option; the method's own option names are added to
    ``method_keys``."""
    if method not in methods:
        raise grid_error(
            path,
            f"train.{method}",
            f"a table here sets one method's options; {method!r} is not in methods ({', '.join(methods)})",
        )
    opts = {}
    for k, v in table.items():
        name, annotation, own = _option(path, f"train.{method}", k, known, [method])
        if isinstance(v, list):
            raise grid_error(
                path,
                f"train.{method}.{k}",
                "per-method options take one value (lists are axes of [train])",
            )
        opts[name] = _check_type(path, f"train.{method}.{k}", v, annotation)
        if own:
            method_keys.add(name)
    return opts


def _cam(path: Path, eval_raw: Any) -> int:
    """``[eval]``: ``cam``, 0..64 Grad-CAM faces per cell (default 0)."""
    if not isinstance(eval_raw, dict):
        raise grid_error(path, "eval", "expected a table, e.g. [eval] cam = 0")
    bad = sorted(set(eval_raw) - set(EVAL_KEYS))
    if bad:
        raise grid_error(
            path, "eval", f"unknown key {bad[0]!r}; valid keys: {', '.join(EVAL_KEYS)}"
        )
    cam = eval_raw.get("cam", 0)
    if not _is_int(cam) or not 0 <= cam <= 64:
        raise grid_error(path, "eval.cam", f"expected 0..64 Grad-CAM faces, found {cam!r}")
    return cam


def _check_size(path: Path, counts: dict[str, int]) -> None:
    """At most MAX_CELLS cells, counted from the axes before expanding (a million cells would
    take minutes and gigabytes)."""
    n_cells = math.prod(counts.values())
    if n_cells > MAX_CELLS:
        product = " x ".join(f"{n:,} {k}" for k, n in counts.items() if n > 1)
        raise grid_error(
            path,
            "top level",
            f"{n_cells:,} cells ({product}); at most {MAX_CELLS:,} are allowed: split "
            "the grid into several files (e.g. one per seed or method list)",
        )


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
    """The complete :class:`fernoise.train.config.TrainConfig`."""
    name: str | None = None
    """The cell's id as :func:`expand` made it unique and short (None: :meth:`plain_id`)."""
    manifest: int = 0
    """Index of the cell's manifest in the sweep's list (0 with one manifest)."""
    manifest_tag: str = ""
    """The manifest's part of the id (``fold-0``), empty when the grid has one manifest."""

    @property
    def id(self) -> str:
        """The cell's name (state and log file names): :meth:`plain_id`, made unique and short
        by :func:`expand` (see :func:`cell_names`)."""
        return self.name or self.plain_id()

    def plain_id(self, noise_tag: str = "", pre_tag: str = "") -> str:
        """``method.noise.s<seed>[.<manifest tag>][.pre-<file name>][.option=value...]``; a
        ``*_tag`` is appended to its part when another setting of the grid shares that part's name."""
        parts = [self.method, self.noise.slug() + noise_tag, f"s{self.seed}"]
        if self.manifest_tag:
            parts.append(self.manifest_tag)
        if self.pretrained is not None:
            parts.append("pre-" + Path(self.pretrained).name + pre_tag)
        parts += [f"{k}={v}" for k, v in self.options]
        return re.sub(r"[^A-Za-z0-9._=+-]", "_", ".".join(parts))

    def noise_seed(self) -> int:
        return self.seed if self.noise.seed == "train" else int(self.noise.seed)


MAX_ID = 150
"""Longest cell id: ``<id>.json`` and its atomic temporary (``.<id>.json.<host>-<pid>.<random>.tmp``)
stay below the 255-byte file name limit of common file systems."""


def _tag(value: Any) -> str:
    import hashlib
    import json

    return (
        "-"
        + hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:6]
    )


def _shorten(text: str) -> str:
    import hashlib

    if len(text) <= MAX_ID:
        return text
    return text[: MAX_ID - 9] + "~" + hashlib.sha256(text.encode()).hexdigest()[:8]


def cell_names(cells: Sequence[Cell]) -> list[str]:
    """Unique, file-safe ids of ``cells``, named by what each cell is.

    A cell keeps its :meth:`Cell.plain_id` (so existing sweep state stays valid) unless another
    setting of the grid shares a part's name: two pretrained starts or two matrix / pairs files
    with one file name in different folders get ``-<hash>`` of their path as written in the grid
    appended to that part. An id longer than :data:`MAX_ID` keeps its first characters and ends
    in ``~<hash>`` of the whole. Any remaining clash (option values that differ only in
    characters outside ``[A-Za-z0-9._=+-]``) gets ``-<hash>`` of the cell's settings.
    """
    import os.path

    def clashing(values: list[Any], name: Callable[[Any], str]) -> set[Any]:
        by: dict[str, set[Any]] = {}
        for v in values:
            by.setdefault(name(v), set()).add(v)
        return {v for group in by.values() if len(group) > 1 for v in group}

    noises = list(dict.fromkeys(c.noise for c in cells))
    noise_clash = clashing(noises, lambda n: n.slug())
    pres = list(dict.fromkeys(c.pretrained for c in cells if c.pretrained is not None))
    pre_clash = clashing(pres, lambda p: Path(p).name)

    def norm(p: str | None) -> str | None:
        return os.path.normpath(p) if p else None

    ids = []
    for c in cells:
        n = c.noise
        noise_tag = (
            _tag([n.kind, n.rate, n.seed, norm(n.pairs), norm(n.matrix), n.column])
            if n in noise_clash
            else ""
        )
        pre_tag = _tag(norm(c.pretrained)) if c.pretrained in pre_clash else ""
        ids.append(_shorten(c.plain_id(noise_tag, pre_tag)))
    seen: dict[str, int] = {}
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
    for k, c in enumerate(cells):
        if seen[ids[k]] > 1:
            what = [
                c.manifest,
                c.method,
                repr(c.noise),
                c.seed,
                c.pretrained,
                [[o, repr(v)] for o, v in c.options],
            ]
            ids[k] = _shorten(ids[k][: MAX_ID - 7] + _tag(what))
    return ids


def _config_error(grid: Grid, cell_desc: str, e: FernoiseError) -> FernoiseError:
    flag = (e.flag or "").removeprefix("--").replace("-", "_")
    key = AXIS_KEYS.get(flag) or (f"train.{flag}" if flag else "train")
    return grid_error(grid.path, key, f"{str(e)} (cell {cell_desc})")


def expand(
    grid: Grid, *, root: Path | None = None, manifest_tags: Sequence[str] = ("",)
) -> list[Cell]:
    """Every cell of ``grid`` in its fixed order, each with a checked TrainConfig. Relative
    pretrained paths are made absolute against ``root`` (the workspace root).
    ``manifest_tags``: one per manifest of the sweep (``""`` for a sweep of one manifest)."""
    import itertools

    from fernoise.train.stage import TrainConfig

    root = root or Workspace().root
    axis_names = list(grid.axes)
    cells: list[Cell] = []
    for seed, (m_index, m_tag), pre in itertools.product(
        grid.seeds, enumerate(manifest_tags), grid.pretrained
    ):
        pre_value = pre
        if pre is not None and pre != "latest" and not Path(pre).is_absolute():
            pre_value = str(root / pre)
        for values in itertools.product(*(grid.axes[a] for a in axis_names)):
            options = tuple(zip(axis_names, values, strict=True))
            for noise in grid.noise:
                for method in grid.methods:
                    kw = {**grid.fixed, **dict(options), **grid.per_method.get(method, {})}
                    own = {k: kw.pop(k) for k in list(kw) if k in grid.method_keys}
                    desc = f"{method}, {noise.label()}, seed {seed}" + "".join(
                        f", {k}={v}" for k, v in options
                    )
                    try:
                        if own:
                            kw["method_params"] = make_method_params(method, own)
                        cfg = TrainConfig(method=method, seed=seed, pretrained=pre_value, **kw)
                    except FernoiseError as e:
                        raise _config_error(grid, desc, e) from None
                    cells.append(
                        Cell(
                            len(cells),
                            method,
                            noise,
                            seed,
                            pre,
                            options,
                            cfg,
                            manifest=m_index,
                            manifest_tag=m_tag,
                        )  # fmt: skip
                    )
    return [
        dataclasses.replace(c, name=name) for c, name in zip(cells, cell_names(cells), strict=True)
    ]


def shard_cells(cells: Sequence[Cell], shard: int, of: int) -> list[Cell]:
    """The ``shard``-th (1-based) of ``of`` contiguous, disjoint shares of ``cells``: share k
    holds cells ``[(k-1) N / of, k N / of)``, so every cell is in exactly one share and the
    shares differ in size by at most one."""
    n = len(cells)
    return list(cells[(shard - 1) * n // of : shard * n // of])
