"""KTO's unpaired rows: one answer per row with a thumbs up or down, instead of a chosen and a rejected answer.

    {"prompt": "...", "completion": "...", "label": true}                              strings
    {"prompt": [{"role": "user", ...}], "completion": [{"role": "assistant", ...}], "label": false}   TRL's conversational form

`label` is a boolean or a thumbs value: true/false, up/down, 👍/👎, 1/0, yes/no, good/bad (any case). Rows are
normalised to {"prompt": [messages], "completion": [one assistant message], "label": bool}; a row that cannot be
used is dropped with its reason, as for pairs. Which objective reads such a file is said where it is refused. The layout is detected in `layouts.py`
(`make_unpaired_plan`); this module reads the thumbs.
"""

from __future__ import annotations

import math

from .text import RowFault, type_name

READ_BY = "kto"  # the objective that reads unpaired data

UP = {"true", "1", "1.0", "up", "thumbs up", "thumbs_up", "thumbsup", "👍", "+1", "+", "yes", "y", "good",
      "desirable", "positive", "accept", "accepted"}
DOWN = {"false", "0", "0.0", "down", "thumbs down", "thumbs_down", "thumbsdown", "👎", "-1", "-", "no", "n", "bad",
        "undesirable", "negative", "reject", "rejected"}


def thumbs(value) -> bool:
    """A label value as True (thumbs up) or False (thumbs down); RowFault naming the value otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        if value in (0, 1):
            return bool(value)
    elif isinstance(value, str) and value.strip().lower() in UP | DOWN:
        return value.strip().lower() in UP
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise RowFault("label is missing")
    shown = repr(value) if isinstance(value, (str, int, float)) else type_name(value)
    raise RowFault(f"label must be a thumbs up or down (true/false, up/down, 👍/👎, 1/0), got {shown[:40]}")
