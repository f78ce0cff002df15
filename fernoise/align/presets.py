"""Dataset presets of ``fernoise align --preset NAME``: named sets of align options.

A preset is a TOML file shipped as package data (``fernoise/presets/<name>.toml``, read with
``importlib.resources`` so a wheel install finds it) or any ``.toml`` path; its keys are align's
option names with ``_`` for ``-`` (:data:`PRESETTABLE`) and an optional ``description``. The CLI
layers them: built-in defaults, then the preset, then the options given explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fernoise.errors import FernoiseError, require_file

# Options a preset may set (preset keys use these names, with '_' for '-').
PRESETTABLE = (
    "format",
    "path_column",
    "label_column",
    "split_column",
    "split_map",
    "mode",
    "on_no_face",
    "size",
    "margin",
    "image_format",
    "jpeg_quality",
    "min_face_size",
    "min_prob",
    "detect_size",
    "all_faces",
    "join_on",
    "join_columns",
    "thresholds",
    "classes",
    "group_column",
    "group_regex",
    "on_duplicate",
    "label_regex",
    "label_map",
)


def preset_names() -> list[str]:
    """Names of the presets shipped inside the package (``fernoise/presets/<name>.toml``)."""
    from importlib.resources import files

    folder = files("fernoise").joinpath("presets")
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> dict[str, Any]:
    """A preset by name (package data ``fernoise/presets/<name>.toml``, read with
    ``importlib.resources``, so a wheel install finds it) or by path to a TOML file."""
    import tomllib
    from importlib.resources import files

    read: Callable[[], str]  # the TOML text, from a file or from the package data
    if name.endswith(".toml") or "/" in name or os.sep in name:
        require_file(name, "preset file", flag="--preset")
        shown, read = Path(name).name, Path(name).read_text
    else:
        res = files("fernoise").joinpath("presets", f"{name}.toml")
        if not res.is_file():
            raise FernoiseError(
                f"unknown preset {name!r}; expected one of: {', '.join(preset_names()) or '(none found)'} "
                "or a path to a .toml file",
                flag="--preset",
            )
        shown, read = f"{name}.toml", res.read_text
    try:
        data = tomllib.loads(read())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise FernoiseError(f"{shown} is not valid TOML ({e})", flag="--preset") from None
    data = {k.replace("-", "_"): v for k, v in data.items() if k != "description"}
    bad = [k for k in data if k not in PRESETTABLE]
    if bad:
        raise FernoiseError(
            f"{shown}: unknown key(s) {bad}; expected some of: {', '.join(PRESETTABLE)}",
            flag="--preset",
        )
    return data
