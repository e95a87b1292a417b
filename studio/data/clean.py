"""A cleaned copy of a preference set: its usable pairs minus the rows a user chose to drop, as a new JSONL file.

The copy is written in TRL's conversational form (prompt messages, one assistant message per answer), which
`load_preferences` reads back as it is; the source file is never touched.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError
from ..store import atomic_write


def write_cleaned(data, drop: set[int], target: str | Path) -> int:
    """Write the pairs of `data` whose source row is not in `drop` to `target`; the number of pairs written."""
    rows = data.rows if data.rows is not None else list(range(1, len(data.pairs) + 1))
    kept = [pair for row, pair in zip(rows, data.pairs) if row not in drop]
    if not kept:
        raise DataError("Nothing would be left: every usable pair is among the rows to drop. Untick a kind.")
    lines = [json.dumps({"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]}, ensure_ascii=False)
             for p in kept]
    atomic_write(target, "\n".join(lines) + "\n")
    return len(kept)
