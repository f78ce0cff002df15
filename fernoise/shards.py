"""How a user numbers shares of a job: ``--shard i/n`` of ``fernoise align`` and ``fernoise sweep``.

``i`` is 1-based: ``1/4`` is the first of 4 shares, ``4/4`` the last (as SLURM array indices and
``seq 1 n`` count). Library functions that take a ``(i, n)`` tuple say their own numbering:
``align_folder(shard=...)`` counts from 0, as ``RANK`` under torchrun does.
"""

from __future__ import annotations

import re

from fernoise.errors import FernoiseError

HELP = "i/n, 1-based: 1/4 is the first of 4 shares, 4/4 the last"


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with 1 <= i <= n; None -> ``(1, 1)`` (the whole job)."""
    if text is None:
        return 1, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise FernoiseError(
            f"expected i/n with 1 <= i <= n (e.g. 2/4), found {text!r}", flag="--shard"
        )
    return int(m.group(1)), int(m.group(2))
