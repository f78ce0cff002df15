"""Examples that run as typed: each `fernoise align` example in docs/align.md writes its own OUT,
and the examples that read the same label file read the same columns."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _align_lines() -> list[list[str]]:
    block = (DOCS / "align.md").read_text().split("```bash", 1)[1].split("```", 1)[0]
    joined = re.sub(r"\\\n\s*", " ", block)
    return [
        shlex.split(line.split("  #", 1)[0])
        for line in joined.splitlines()
        if line.startswith("fernoise align ")
    ]


def test_every_align_example_has_its_own_out():
    outs = [words[3] for words in _align_lines()]
    assert len(outs) >= 8 and len(set(outs)) == len(outs), outs


def test_examples_of_one_label_file_read_the_same_columns():
    seen: dict[str, dict[str, str]] = {}
    for words in _align_lines():
        if "--labels" not in words or "--format" not in words:
            continue
        if words[words.index("--format") + 1] != "csv":
            continue
        cols = {
            flag: words[words.index(flag) + 1]
            for flag in ("--path-column", "--label-column", "--split-column")
            if flag in words
        }
        label_file = words[words.index("--labels") + 1]
        assert seen.setdefault(label_file, cols) == cols, (label_file, seen[label_file], cols)
    assert seen, "no CSV example found"
