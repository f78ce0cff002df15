"""Canonical classes, name aliases, each dataset's label order, and the asymmetric-noise pairs.

One canonical order for every dataset (AffectNet's, so the 7 basic classes are a prefix of 8):
0 neutral, 1 happy, 2 sad, 3 surprise, 4 fear, 5 disgust, 6 anger, 7 contempt.

A manifest's class list is the dataset's own classes: an ordered subset of that canonical
order (``basic7`` = the first 7, ``basic8`` = all 8, anything else is ``custom``), and its
``label`` column holds indices into *that list* (for basic7/basic8 they equal the canonical
indices). :func:`class_list` builds such a list, :func:`label_space_of` names it and
:func:`to_local` maps canonical indices into it.
"""

from __future__ import annotations

from fernoise.errors import FernoiseError

CLASSES: tuple[str, ...] = (
    "neutral",
    "happy",
    "sad",
    "surprise",
    "fear",
    "disgust",
    "anger",
    "contempt",
)
LABEL_SPACES: dict[str, tuple[str, ...]] = {"basic7": CLASSES[:7], "basic8": CLASSES}

# Every accepted spelling (lower case) of each canonical class.
ALIASES: dict[str, str] = {
    "neutral": "neutral",
    "neutrality": "neutral",
    "calm": "neutral",
    "happy": "happy",
    "happiness": "happy",
    "joy": "happy",
    "sad": "sad",
    "sadness": "sad",
    "surprise": "surprise",
    "surprised": "surprise",
    "fear": "fear",
    "fearful": "fear",
    "afraid": "fear",
    "disgust": "disgust",
    "disgusted": "disgust",
    "anger": "anger",
    "angry": "anger",
    "contempt": "contempt",
    "contemptuous": "contempt",
}

# Dataset label orders, as the datasets number them -> canonical class name.
RAFDB_ORDER: dict[int, str] = {
    1: "surprise",
    2: "fear",
    3: "disgust",
    4: "happy",
    5: "sad",
    6: "anger",
    7: "neutral",
}
FER2013_ORDER: dict[int, str] = {
    0: "anger",
    1: "disgust",
    2: "fear",
    3: "happy",
    4: "sad",
    5: "surprise",
    6: "neutral",
}
AFFECTNET_ORDER: dict[int, str] = {
    0: "neutral",
    1: "happy",
    2: "sad",
    3: "surprise",
    4: "fear",
    5: "disgust",
    6: "anger",
    7: "contempt",
}  # 8 None, 9 Uncertain, 10 No-Face are dropped
FERPLUS_VOTE_COLUMNS: tuple[str, ...] = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "NF",
)

# Paper §4.3.1/§4.3.2: each class flips to its most-confused partner under asym noise.
ASYM_PAIRS: dict[str, str] = {
    "surprise": "anger",
    "fear": "surprise",
    "disgust": "anger",
    "happy": "neutral",
    "sad": "neutral",
    "anger": "happy",
    "neutral": "sad",
    "contempt": "neutral",
}


def accepted_names() -> str:
    return ", ".join(sorted(ALIASES))


def canonical_name(name: str, *, flag: str | None = None) -> str:
    """Map a class name or alias (any case) to its canonical name, or raise listing the valid ones."""
    key = str(name).strip().lower()
    if key not in ALIASES:
        raise FernoiseError(
            f"unknown class name {name!r}; expected one of: {accepted_names()}", flag=flag
        )
    return ALIASES[key]


def class_index(name: str, *, flag: str | None = None) -> int:
    return CLASSES.index(canonical_name(name, flag=flag))


def label_space_for(indices) -> str:
    """The smallest basic label space holding every canonical index given (``basic7`` unless
    contempt occurs). For a dataset's own class list use :func:`class_list` instead."""
    return "basic8" if any(int(i) == 7 for i in indices) else "basic7"


def class_list(names, *, flag: str | None = None) -> list[str]:
    """Canonical names (aliases accepted, any case; or ``basic7``/``basic8``) -> the ordered
    subset of :data:`CLASSES` they name, duplicates dropped. ``"happy,Angry,sadness"`` or
    ``["happy", "angry", "sad"]`` -> ``["happy", "sad", "anger"]``."""
    if isinstance(names, str):
        text = names.strip()
        if text.lower() in LABEL_SPACES:
            return list(LABEL_SPACES[text.lower()])
        names = [x for x in text.split(",")]
    wanted: set[str] = set()
    for n in names:
        if str(n).strip().lower() in LABEL_SPACES:
            wanted.update(LABEL_SPACES[str(n).strip().lower()])
        elif str(n).strip():
            wanted.add(canonical_name(n, flag=flag))
    if not wanted:
        raise FernoiseError(
            f"expected class names (e.g. happy,sad,anger) or basic7/basic8, found {names!r}",
            flag=flag,
        )
    return [c for c in CLASSES if c in wanted]


def label_space_of(classes) -> str:
    """``basic7`` / ``basic8`` when ``classes`` is exactly that list, else ``custom``."""
    classes = tuple(classes)
    for name, space in LABEL_SPACES.items():
        if classes == space:
            return name
    return "custom"


def to_local(canonical: int, classes) -> int:
    """The index in ``classes`` of canonical class index ``canonical`` (ValueError if absent)."""
    return list(classes).index(CLASSES[int(canonical)])


def classes_of(space: str) -> tuple[str, ...]:
    if space not in LABEL_SPACES:
        raise FernoiseError(
            f"unknown label space {space!r}; expected one of: {', '.join(LABEL_SPACES)}"
        )
    return LABEL_SPACES[space]


def asym_partners(classes: tuple[str, ...], pairs: dict[str, str] | None = None) -> list[int]:
    """Partner index of each class index for asymmetric noise, within ``classes``.

    Every class of ``classes`` needs a partner that is itself in ``classes``: a partner the
    dataset does not have (``happy -> neutral`` on a set without neutral) is an error naming
    the class and pointing at ``--pairs``, never a flip into a class the dataset lacks.
    """
    pairs = ASYM_PAIRS if pairs is None else pairs
    source = "the paper's pairs" if pairs is ASYM_PAIRS else "the pairs file"
    out = []
    for c in classes:
        if c not in pairs:
            raise FernoiseError(
                f"{source} give no asymmetric partner for class {c!r}; give every class of {list(classes)} "
                "one with --pairs FILE (CSV from,to)",
                flag="--pairs",
            )
        partner = pairs[c]
        if partner not in classes:
            raise FernoiseError(
                f"{source} pair {c!r} with {partner!r}, which this manifest does not have (its classes: "
                f"{', '.join(classes)}); give partners inside that list with --pairs FILE (CSV from,to)",
                flag="--pairs",
            )
        out.append(classes.index(partner))
    return out
