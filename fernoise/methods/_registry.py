"""The registry the method modules add themselves to (``@register``); read it through
:mod:`fernoise.methods`. Separate from the package's ``__init__`` so that a method module
imports it without importing the package that imports every method module."""

from __future__ import annotations

from fernoise.methods.base import Method, params_fields

_REGISTRY: dict[str, type[Method]] = {}
_FLAGS: dict[str, dict[str, str]] = {}  # flag -> {method name: field name}
_FLAG_HELP: dict[str, str] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add ``cls`` under ``cls.name``. Names are unique; a flag may be shared
    by several methods only with the same field name and help (pc's and ncctfer's
    ``--threshold``)."""
    for attr in ("name", "summary", "source", "repo", "face_pretrained", "optim"):
        if not hasattr(cls, attr):
            raise TypeError(
                f"{cls.__name__} lacks the class attribute {attr!r} (fernoise.methods.base)"
            )
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"method {cls.name!r} registered twice")
    for f in params_fields(cls):
        flag = f.metadata["flag"]
        owners = _FLAGS.setdefault(flag, {})
        if (
            any(name != f.name for m, name in owners.items() if m != cls.name)
            or _FLAG_HELP.setdefault(flag, f.metadata["help"]) != f.metadata["help"]
        ):
            raise TypeError(
                f"{cls.name}: flag {flag} already means something else for {', '.join(owners)}"
            )
        owners[cls.name] = f.name
    _REGISTRY[cls.name] = cls
    return cls
