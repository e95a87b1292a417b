"""Turn a preference-data file or hub dataset into clean, TRL-ready DPO pairs.

One job: read the data, work out its layout, normalise every usable row to TRL's conversational
preference form and account for every row that could not be used (row number + reason). Token
statistics and a seeded train/eval split ride along because they are questions about the same pairs.
What a *run* reads from its settings is `studio.training_data`; this package knows nothing of runs.

    readers.py      files and hub ids -> numbered records (JSONL, JSON, CSV, Parquet)
    layouts.py      which column plays which part (detected, or a given mapping)
    rows.py         one record -> a normalised pair, or the reason its row is dropped
    tokens.py       token counts through the chat template
    preferences.py  load_preferences: the one entry point; PreferenceSet, DataReport, the split
    text.py         per-field caps, undecodable bytes, values made safe to show
"""

from ..errors import DataError
from .layouts import CHOSEN_NAMES, PROMPT_NAMES, REJECTED_NAMES, SYSTEM_NAMES, Columns, UnknownLayout, guess_columns
from .preferences import DataReport, NoUsablePairs, PreferenceSet, load_preferences, peek
from .readers import FORMATS, file_kind, is_hub_id, max_file_bytes
from .text import MAX_FIELD_CHARS
from .tokens import token_lengths

__all__ = [
    "CHOSEN_NAMES", "FORMATS", "MAX_FIELD_CHARS", "PROMPT_NAMES", "REJECTED_NAMES", "SYSTEM_NAMES", "Columns",
    "DataError", "DataReport", "NoUsablePairs", "PreferenceSet", "UnknownLayout", "file_kind", "guess_columns",
    "is_hub_id", "load_preferences", "max_file_bytes", "peek", "token_lengths",
]
