"""The method plugin API: what a training method declares, in one place (the only place it is
documented; docs/methods.md says what each method computes).

A method is a subclass of :class:`Method` in its own module of ``fernoise/methods/``,
registered with ``@register`` (``fernoise.methods``). The training loop (``fernoise.train.loop.fit``)
names no method; it does exactly this (docs/writing-a-method.md walks through a method)::

    method.build(model)                                   # heads, a second network, ...
    optimizer, scheduler = method.configure_optimizers(model, cfg)
    for epoch in epochs:
        method.start_epoch(model, EpochContext(...))      # e.g. a pass over every row
        streams = method.epoch_rows(epoch, train_rows)    # {"train": rows} by default
        for each batch (of every stream):
            views = {name: normalised float (N, 3, H, W) for name in method.views_for(warm=warm)}
            out = net(method.loss, views, y, idx, epoch=epoch, warm=warm, gen=gen)   # -> LossOut
            optimizer.zero_grad(); out.loss.backward(); optimizer.step()
            method.after_step(out, y, idx, epoch=epoch)
        scheduler.step()

``net`` is the model (or its DistributedDataParallel wrapper): ``FerNet.forward(fn, *a, **kw)``
just calls ``fn(model, *a, **kw)``, so the whole loss runs *inside* the module call and DDP's
hooks see every head the method uses. Inside ``loss`` call the model's parts directly
(``model.features(x)``, ``model.pcc(f)``), never ``model(...)`` again.

Writing a method
----------------
- Class attributes: ``name`` (registry name, also ``--method``), ``summary`` (one line),
  ``source`` (paper), ``repo`` (official code: "owner/repo path"), ``face_pretrained`` (whether
  the published numbers started from a face-recognition backbone), ``Params`` (a frozen
  dataclass, see below), ``views`` (view names the data code builds per sample; see Views),
  ``optim`` (:class:`OptimDefaults`, the official optimiser), ``parts`` (names of the loss
  parts ``loss`` may return; each is logged as ``loss_<part>`` in metrics.jsonl, None in an
  epoch where it never appeared; ``part_captions`` says what they mean), ``relabels`` (True
  when it returns ``LossOut.relabelled``), ``warmup_is_own_loss`` (True for plain cross-entropy).
  ``fernoise report`` lists methods in registration order (``fernoise.methods.names()``); no
  module outside ``fernoise/methods/`` names a method (``tests/test_method_contract.py``).
- ``Params``: a frozen dataclass; every field made with :func:`option` (flag, help, and for
  strings the choices), defaults from the source. Every field becomes a ``fernoise train``
  flag, is recorded in config.json under ``method_params`` and enters the run key. Check
  values in ``__post_init__`` with ``FernoiseError(..., flag="--the-flag")``; checks that need
  the class count go in ``Method.__init__``. Flags are unique across methods (``register``
  checks); a flag given with another ``--method`` is a one-line error naming both.
- No torch import at module level: the CLI imports the registry to build ``fernoise train``'s
  flags and ``fernoise --help`` must stay fast. Import torch inside the methods.
- ``__init__(params, *, num_classes, n_rows, image_size=224)``: ``n_rows`` is the number of
  rows the loop's ``idx`` indexes (every usable manifest row, not only the training ones);
  allocate per-sample state of that length here. ``image_size`` is the training side in
  pixels (heads on the pre-pool map depend on it; eval and predict pass the run's). A
  parameter whose default depends on the class count (ncctfer's ``k``: None = min(4, C-1))
  is resolved here into ``self.params``; train records the resolved ``Params``.
- ``build(model)``: add heads and extra modules with ``model.add_module(name, module)``. The
  creation order is the seeded initialisation order: ce/pc/nl/ncctfer create ``pcc`` then
  (ncctfer) ``ncc``, exactly as fernoise always did, so their results stay bit for bit.
  The key names of model.pt are the module names (``backbone.*``, ``pcc.*``, ``ncc.*``).
- ``param_groups(model, lr_backbone=, lr_head=, weight_decay=)``: Adam's groups; the default
  is the backbone at ``lr_backbone`` and every other parameter (in creation order) at
  ``lr_head``. Override for a third group (e.g. a classifier at 10x).
- ``loss(model, views, y, idx, *, epoch, warm, gen)`` -> :class:`LossOut`. ``views``: the
  normalised float ``(N, 3, H, W)`` tensor of each name in ``views_for(warm)``; ``y``:
  int64 ``(N,)`` the manifest's (possibly noisy) labels; a method that relabels keeps its own
  label store, looks it up with ``idx`` and returns the labels it trained on in
  ``LossOut.labels`` (train accuracy is measured against them); ``idx``: int64 ``(N,)`` row positions (on the
  CPU) into per-sample state; ``epoch``: 1-based; ``warm``: the warm-up epochs
  (``--warmup``), in which every method should return :meth:`warmup_loss` (plain
  cross-entropy of the main head on every sample, part ``s``) unless its docstring says
  otherwise; ``gen``: a CPU ``torch.Generator`` seeded by (seed, epoch), the only source of
  randomness a loss may use (complementary labels, partner permutations), so that a resumed
  run equals an uninterrupted one. The loop runs ``loss`` under bf16 autocast when
  ``--precision bf16``: compute losses on ``.float()`` logits.
- ``after_step(out, y, idx, *, epoch)``: optional, after ``optimizer.step()`` (no grad).
- ``backbones(model)``: every backbone the method trains, by module name (default
  ``{"backbone": model.backbone}``); ``--pretrained`` fills and ``--compile`` compiles each, the
  default ``param_groups`` puts each at ``lr_backbone``. A second network: ``build`` adds
  ``model.new_backbone()`` (Co-teaching).
- ``configure_optimizers(model, cfg)`` -> ``(optimizer, scheduler or None)``: default Adam over
  ``param_groups`` and ``ExponentialLR(lr_decay)`` when set. The scheduler needs ``step()``
  (after every epoch), ``state_dict()`` and ``load_state_dict()`` (checkpoints).
- ``start_epoch(model, ctx)``: before every epoch; :class:`EpochContext` gives the rows, labels,
  known-clean flags and ``predict`` (an un-augmented pass, gathered across processes).
- ``epoch_rows(epoch, rows)`` -> ``{stream: positions}``: several streams (labelled and
  unlabelled); the first leads, the others are cycled to its length, and ``loss`` then gets
  ``views[stream][view]``, ``y[stream]``, ``idx[stream]`` (``views_for(warm=, stream=)``).
- ``warn(message)``: a one-line warning in the run's output.
- ``logits(model, x)``: test-time logits ``(N, C)`` of a normalised batch (val/test accuracy,
  eval, predict, Grad-CAM). The default is ``model.pcc(model.features(x))``.
- ``state_dict()`` / ``load_state_dict(state, *, n_rows)``: per-sample state (SCN's labels,
  ELR's targets) as a dict of tensors whose first dimension is ``n_rows``; saved in every
  checkpoint (the safe, ``weights_only=True`` format: tensors only) and restored on resume.
  ``load_state_dict`` returns False, loading nothing, when a tensor's first dimension is not
  ``n_rows``: the loop then starts the run over and says so. Under torch.distributed each
  process updates the rows of its own batches; at the end of every epoch the loop merges, per
  row, what the processes that touched it wrote (mean over them), so every process and the
  checkpoint hold the same state.

Views
-----
``views`` names views of the one registry both view paths use (``fernoise/methods/views.py``:
``register_view(name, sample=, draw=, batch=)``), uint8 from the per-sample numpy generator, so
pixels depend only on (seed, epoch, sample): ``weak`` (pad 4, random crop, flip), ``strong``
(that same weak view plus RandAugment), SCN/RUL/EAC's, and ``kind#2`` for another independent
draw of a kind. ``views_for(warm=True)`` defaults to the first view only. A method with two or
more views needs ``--batch-size`` >= 2 (checked with one line).

Metrics the loop derives from :class:`LossOut` (metrics.jsonl, per epoch): ``loss`` and
``loss_<part>`` (sample-weighted means over the epoch), ``train_acc`` (``logits`` vs ``labels``, or ``y``),
``thresholds`` (per-class mean over the batches where a class had one), ``confident_frac``,
``confident_precision``/``confident_recall`` (``selected`` vs the manifest's ``is_noisy``:
precision = clean among selected, recall = selected among clean), ``relabelled`` (count)
and ``relabel_precision`` (relabelled to the clean label, with ``label_clean``).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

from fernoise.errors import FernoiseError

if TYPE_CHECKING:  # torch is imported lazily (see the module docstring)
    from collections.abc import Callable

    import numpy as np
    import torch
    from torch import Tensor, nn

    from fernoise.model import FerNet


@dataclass(frozen=True)
class OptimDefaults:
    """A method's official optimiser (Adam) and schedule; ``--epochs``, ``--batch-size``,
    ``--lr-backbone``, ``--lr-head``, ``--weight-decay`` and ``--lr-decay`` override them
    (the resolved values are recorded in config.json)."""

    lr_backbone: float
    lr_head: float
    weight_decay: float = 0.0
    lr_decay: float | None = None
    """Per-epoch exponential factor (lr x lr_decay after every epoch); None = constant."""
    epochs: int = 40
    batch_size: int = 128


@dataclass
class LossOut:
    """One mini-batch's loss, as ``Method.loss`` returns it (``N`` samples, ``C`` classes)."""

    loss: Tensor
    """Scalar to backpropagate."""
    parts: dict[str, Tensor]
    """Named loss parts (scalars; detached is fine), logged as ``loss_<name>``; every name must
    be in the method's ``parts``."""
    logits: Tensor
    """``(N, C)`` logits the train accuracy is measured on."""
    selected: Tensor | None = None
    """bool ``(N,)``: the samples the method treats as clean (methods that select)."""
    thresholds: Tensor | None = None
    """``(C,)`` per-class thresholds, NaN for a class without one in this batch."""
    relabelled: Tensor | None = None
    """int64 ``(N,)``: the new label of each sample this step relabelled, -1 elsewhere."""
    labels: Tensor | None = None
    """int64 ``(N,)``: the labels this step trained on, where a label store replaced ``y``."""


@dataclass
class EpochContext:
    """What :meth:`Method.start_epoch` gets: the epoch and the loop's services."""

    epoch: int
    """1-based."""
    warm: bool
    """Inside the warm-up (``--warmup``)."""
    rows: np.ndarray
    """The training rows (positions into per-sample state and ``labels``), all processes'."""
    labels: Tensor
    """int64 ``(n_rows,)``: the manifest's (possibly noisy) labels, -1 where unlabelled."""
    clean: Tensor | None
    """bool ``(n_rows,)``: rows whose label is known clean (a corrupted manifest's
    ``is_noisy``), for reporting only; None when unknown."""
    device: torch.device
    predict: Callable[..., Tensor]
    """``predict(fn, rows=None)``: ``fn(model, x, idx)`` -> ``(B, ...)`` on un-augmented,
    normalised batches of ``rows`` (default: every training row) in eval mode without
    gradients; returns the ``(len(rows), ...)`` float32 CPU tensor in ``rows`` order, equal on
    every process (each computes its share, then they are summed across processes)."""


def option(default: Any, flag: str, help: str, *, choices: tuple[str, ...] | None = None) -> Any:
    """A ``Params`` field that is the ``fernoise train`` flag ``flag`` (e.g. ``--gce-q``).

    ``choices`` (strings only) are checked by :func:`check_choice` and listed in ``--help``.
    """
    meta = {"flag": flag, "help": help, "choices": choices}
    return field(default=default, metadata=meta)


def check_choice(params: Any, name: str) -> None:
    """Raise a FernoiseError naming the flag when ``params.name`` is not one of its choices."""
    f = next(f for f in fields(params) if f.name == name)
    value, choices = getattr(params, name), f.metadata["choices"]
    if value not in choices:
        raise FernoiseError(
            f"expected one of {', '.join(choices)}, got {value!r}", flag=f.metadata["flag"]
        )


def check_range(
    value: float,
    lo: float | None,
    hi: float | None,
    flag: str,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    """Raise a FernoiseError naming ``flag`` unless ``lo <(=) value <(=) hi`` (None = unbounded)."""
    import math

    ok = isinstance(value, (int, float)) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise FernoiseError(
            f"expected a value in {left}{lo if lo is not None else '-inf'}, "
            f"{hi if hi is not None else 'inf'}{right}, got {value}",
            flag=flag,
        )


@dataclass(frozen=True)
class NoParams:
    """The ``Params`` of a method without hyper-parameters of its own."""


class Method:
    """Base class of every method; see the module docstring for the contract."""

    name: ClassVar[str]
    summary: ClassVar[str]
    source: ClassVar[str]
    repo: ClassVar[str]
    face_pretrained: ClassVar[bool]
    Params: ClassVar[type] = NoParams
    views: ClassVar[tuple[str, ...]] = ("weak",)
    optim: ClassVar[OptimDefaults]
    parts: ClassVar[tuple[str, ...]] = ("s",)
    part_captions: ClassVar[dict[str, str]] = {}
    """What a loss part means, for the loss panel of eval's curves (``{"c": "negative classes"}``);
    a part without one is drawn as ``L_<part>``."""
    warmup_is_own_loss: ClassVar[bool] = False
    """True for a method whose loss is the warm-up's (plain cross-entropy): eval then never warns
    that the best epoch lies inside the warm-up."""
    relabels: ClassVar[bool] = False
    """True for a method that relabels (keeps a label store): metrics log ``relabelled`` and
    ``relabel_precision`` every epoch (0 / null before it starts), null for the others."""
    _say: Callable[[dict], None] | None = None
    """The loop's output for :meth:`warn` (bound by the loop)."""
    warmup: ClassVar[int | None] = None
    """Warm-up epochs when ``--warmup`` is not given: None = NCCTFER's protocol,
    ``min(5, epochs // 3)`` (its paper's 5 for 40 epochs, shared by the baselines of its tables);
    0 for a method whose official code has no warm-up (:meth:`default_warmup`)."""

    @classmethod
    def default_warmup(cls, epochs: int) -> int:
        """Warm-up epochs of a run of ``epochs`` epochs when ``--warmup`` is not given."""
        return min(5, epochs // 3) if cls.warmup is None else min(cls.warmup, epochs)

    def __init__(self, params: Any = None, *, num_classes: int, n_rows: int, image_size: int = 224):
        self.params = params if params is not None else self.Params()
        if not isinstance(self.params, self.Params):
            raise TypeError(
                f"{self.name} takes {self.Params.__name__}, got {type(self.params).__name__}"
            )
        self.num_classes = num_classes
        self.n_rows = n_rows
        self.image_size = image_size

    # -- the model ------------------------------------------------------------------------
    def backbones(self, model: FerNet) -> dict[str, nn.Module]:
        """Every backbone the method trains, by module name (default: ``{"backbone": ...}``).
        ``--pretrained`` fills each, ``--compile`` compiles each, the default
        :meth:`param_groups` puts each at ``lr_backbone``; Grad-CAM looks at the first."""
        return {"backbone": model.backbone}

    def build(self, model: FerNet) -> None:
        """Add the method's heads to ``model`` (default: ``pcc = Linear(512, C)``)."""
        from torch import nn

        model.add_module("pcc", nn.Linear(model.feature_dim, self.num_classes))

    def param_groups(
        self, model: FerNet, *, lr_backbone: float, lr_head: float, weight_decay: float = 0.0
    ) -> list[dict]:
        """Parameter groups: every backbone (:meth:`backbones`, in order) at ``lr_backbone``, then
        everything else (in creation order) at ``lr_head``."""
        backbone = [p for b in self.backbones(model).values() for p in b.parameters()]
        seen = {id(p) for p in backbone}
        heads = [p for p in model.parameters() if id(p) not in seen]
        return [
            {"params": backbone, "lr": lr_backbone, "weight_decay": weight_decay},
            {"params": heads, "lr": lr_head, "weight_decay": weight_decay},
        ]

    def configure_optimizers(self, model: FerNet, cfg: Any) -> tuple[Any, Any]:
        """``(optimizer, scheduler or None)`` for the run's resolved configuration ``cfg``
        (``lr_backbone``, ``lr_head``, ``weight_decay``, ``lr_decay``, ``epochs``, ...).
        Default: Adam over :meth:`param_groups`, and ``ExponentialLR(lr_decay)`` when set.
        The loop calls ``scheduler.step()`` after every epoch and keeps ``state_dict()`` of
        both in the checkpoint; metrics log the first group's lr as ``lr_backbone`` and the
        second's as ``lr_head``."""
        import torch

        optimizer = torch.optim.Adam(
            self.param_groups(
                model,
                lr_backbone=cfg.lr_backbone,
                lr_head=cfg.lr_head,
                weight_decay=cfg.weight_decay,
            )
        )
        scheduler = (
            torch.optim.lr_scheduler.ExponentialLR(optimizer, cfg.lr_decay)
            if cfg.lr_decay
            else None
        )
        return optimizer, scheduler

    def logits(self, model: FerNet, x: Tensor) -> Tensor:
        """Test-time logits ``(N, C)`` of a normalised batch ``x`` ``(N, 3, H, W)``."""
        return model.pcc(model.features(x))

    # -- one epoch ------------------------------------------------------------------------
    def start_epoch(self, model: FerNet, ctx: EpochContext) -> None:
        """Called before every epoch (after resume, before its batches); default: nothing.
        ``ctx.predict`` makes an un-augmented pass over rows (e.g. every training row's loss
        for a mixture model), gathered from every process under torch.distributed."""

    def epoch_rows(self, epoch: int, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The epoch's streams of training rows: ``{name: row positions}``; default one stream,
        ``{"train": rows}``. With several, the first leads (its batches make the epoch), the
        others are shuffled and cycled to match it, and :meth:`loss` gets one entry per stream
        (``views[stream][view]``, ``y[stream]``, ``idx[stream]``); a stream with fewer than 2
        rows is left out of that epoch."""
        return {"train": rows}

    def epoch_phases(self, epoch: int, rows: np.ndarray) -> list[dict[str, np.ndarray]]:
        """The epoch's phases, run one after the other: each a ``{stream: positions}`` dict as
        :meth:`epoch_rows` returns (its first stream leads that phase, the others are cycled to
        it); default one phase, ``[self.epoch_rows(epoch, rows)]``. For a method that trains its
        networks in turn within an epoch (DivideMix: network 1 a pass, then network 2 a pass).
        Stream names are unique across phases (``views_for`` and ``loss`` tell the phases apart
        by them); with two or more phases ``loss`` always gets one entry per stream, and under
        torch.distributed parameters a phase leaves idle are allowed."""
        return [self.epoch_rows(epoch, rows)]

    def epoch_selection(self) -> Tensor | None:
        """bool ``(n_rows,)``: the rows the method treats as clean this epoch when it decides
        that before the epoch's batches (a division in :meth:`start_epoch`), else None (the
        default). When given, ``confident_frac``/``precision``/``recall`` are computed from it
        over the training rows, once per epoch, instead of from ``LossOut.selected``."""
        return None

    def warn(self, message: str) -> None:
        """Say ``message`` as a one-line warning of the run (bound by the loop; before the loop
        binds it, e.g. in a unit test, it is a Python warning)."""
        say = self._say
        if say is None:
            import warnings

            warnings.warn(message, stacklevel=2)
        else:
            say({"event": "warning", "message": message})

    # -- one batch ------------------------------------------------------------------------
    def views_for(self, *, warm: bool, stream: str = "train") -> tuple[str, ...]:
        """The view names this epoch needs for ``stream`` (warm-up: the first view only)."""
        return self.views[:1] if warm else self.views

    def loss(
        self,
        model: FerNet,
        views: dict[str, Tensor],
        y: Tensor,
        idx: Tensor,
        *,
        epoch: int,
        warm: bool,
        gen: torch.Generator,
    ) -> LossOut:
        raise NotImplementedError

    def warmup_loss(self, model: FerNet, views: dict[str, Tensor], y: Tensor) -> LossOut:
        """Warm-up: cross-entropy of the test-time head on every sample of the first view."""
        from fernoise.methods import losses

        logits = self.logits(model, views[self.views[0]])
        ce = losses.cross_entropy(logits, y)
        return LossOut(ce, {"s": ce}, logits)

    def after_step(self, out: LossOut, y: Tensor, idx: Tensor, *, epoch: int) -> None:
        """Called after ``optimizer.step()``; default: nothing."""

    # -- per-sample state -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """Per-sample state, each tensor ``(n_rows, ...)``; default: none."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor], *, n_rows: int) -> bool:
        """Restore :meth:`state_dict`; False (nothing loaded) when a size is not ``n_rows``."""
        own = self.state_dict()
        if set(state) != set(own) or any(
            t.shape[:1] != (n_rows,) or t.shape != own[k].shape for k, t in state.items()
        ):
            return False
        for k, t in state.items():
            own[k].copy_(t)
        return True

    # -- description ----------------------------------------------------------------------
    @classmethod
    def describe_params(cls, params: Any = None) -> str:
        """``--flag value`` pairs of ``params`` (default: the defaults), for tables."""
        params = params if params is not None else cls.Params()
        return " ".join(f"{f.metadata['flag']} {getattr(params, f.name)}" for f in fields(params))


def option_type(f) -> type:
    """The value type (int, float, str or bool) of a ``Params`` field, from its annotation
    (``"int | None"`` -> int) or, failing that, its default."""
    names = {"int": int, "float": float, "str": str, "bool": bool}
    ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    for part in (a.strip() for a in ann.split("|")):
        if part in names:
            return names[part]
    return type(f.default)


def params_fields(cls: type[Method]) -> list:
    """The dataclass fields of ``cls.Params`` (each with metadata flag/help/choices)."""
    out = list(fields(cls.Params))
    for f in out:
        if "flag" not in f.metadata or f.default is MISSING:
            raise TypeError(
                f"{cls.__name__}.Params.{f.name}: make it with option(default, flag, help)"
            )
    return out
