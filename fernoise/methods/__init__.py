"""The registry of training methods: one module per method (timm's one file per family).

``get(name)`` returns a method's class (an unknown name is a FernoiseError that lists every
method with its one-line summary); ``names()`` lists them in table order;
``make_params(name, given)`` turns CLI flag values into the method's ``Params`` (a flag of
another method is a one-line error naming both); ``create`` and ``build_model`` make the
method and its model. The API a method implements is documented in
:mod:`fernoise.methods.base`; what each computes in docs/methods.md.

Importing this package does not import torch.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any

from fernoise.errors import FernoiseError
from fernoise.methods._registry import _FLAGS, _REGISTRY, register
from fernoise.methods.base import LossOut, Method, NoParams, OptimDefaults, option

if TYPE_CHECKING:
    from fernoise.model import FerNet

__all__ = [
    "LossOut",
    "Method",
    "NoParams",
    "OptimDefaults",
    "all_flags",
    "build_model",
    "create",
    "get",
    "make_params",
    "names",
    "option",
    "params_from_dict",
    "register",
]


def names() -> list[str]:
    """Registered method names, in registration (table) order."""
    return list(_REGISTRY)


def get(name: str) -> type[Method]:
    """The class of method ``name``; an unknown name lists every method with its summary."""
    try:
        return _REGISTRY[name]
    except KeyError:
        listing = "; ".join(f"{n}: {c.summary}" for n, c in _REGISTRY.items())
        raise FernoiseError(
            f"unknown method {name!r}; choose one of: {listing}", flag="--method"
        ) from None


def all_flags() -> dict[str, dict[str, str]]:
    """Every method flag: ``{flag: {method name: field name}}``, in registration order."""
    return {flag: dict(owners) for flag, owners in _FLAGS.items()}


def make_params(name: str, given: dict[str, Any] | None = None) -> Any:
    """``name``'s ``Params`` from ``given`` = ``{flag: value}`` (flags not given are absent or None).

    A flag of another method raises a FernoiseError naming the flag, its method and ``name``.
    """
    cls = get(name)
    values = {}
    for flag, value in (given or {}).items():
        if value is None:
            continue
        owners = _FLAGS.get(flag)
        if owners is None:
            raise FernoiseError(f"{flag} is not a method flag; see `fernoise methods`", flag=flag)
        if name not in owners:
            them = " or ".join(f"--method {m}" for m in owners)
            raise FernoiseError(
                f"{flag} is a flag of {them}, not of --method {name}; drop it or change --method",
                flag=flag,
            )
        values[owners[name]] = value
    return cls.Params(**values)


def params_from_dict(name: str, d: dict[str, Any] | None) -> Any:
    """``Params`` of ``name`` from a config.json ``method_params`` dict (None: the defaults).

    Fields the dict lacks take their defaults (runs made before the field existed)."""
    cls = get(name)
    known = {f.name for f in fields(cls.Params)}
    return cls.Params(**{k: v for k, v in (d or {}).items() if k in known})


def create(
    name: str, params: Any = None, *, num_classes: int, n_rows: int = 0, image_size: int = 224
) -> Method:
    """An instance of method ``name`` (``params`` None: its defaults)."""
    cls = get(name)
    return cls(params, num_classes=num_classes, n_rows=n_rows, image_size=image_size)


def build_model(method: Method, backbone: str = "resnet18") -> FerNet:
    """A fresh ``FerNet`` on ``backbone`` (``fernoise.backbones``) with ``method``'s modules,
    created in the method's order (seed first: ``torch.manual_seed`` before calling this gives
    the seeded initialisation)."""
    from fernoise.model import FerNet

    model = FerNet(backbone)
    method.build(model)
    return model


# The built-in methods, in the order of `fernoise methods`. Each module registers itself.
from fernoise.methods import ce, pc, nl, ncctfer, gce, sce, elr  # noqa: E402,F401,I001
from fernoise.methods import scn, rul, eac, coteaching, dividemix, sop  # noqa: E402,F401,I001
