"""A preference data set: read, detect, normalise and measure a source; account for every dropped row.

`load_preferences` is the one entry point (the CLI's `data check`, the Data tab and a run all call it).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..errors import DataError
from .findings import prompt_key
from .layouts import Columns, Plan, make_plan
from .readers import column_names, read_source
from .rows import normalise
from .text import RowFault, shown
from .tokens import measure_prompts, token_stats


class NoUsablePairs(DataError):
    """Rows were read but every one was dropped: `layout` and `used` say what was recognised (None when no row
    parsed), `dropped` lists each row with its reason."""

    def __init__(self, message: str, rows: int, dropped: list[dict], layout: str | None = None,
                 used: dict | None = None):
        super().__init__(message)
        self.rows, self.dropped, self.layout, self.used = rows, dropped, layout, used or {}



@dataclass
class DataReport:
    source: str
    format: str
    layout: str
    columns: list[str]
    rows: int
    pairs: int
    dropped: list[dict]
    tokens: dict | None = None
    used: dict[str, str] = field(default_factory=dict)  # part (prompt, chosen, ...) -> the column read for it
    notes: list[str] = field(default_factory=list)  # choices the reader made that the user should know about
    # Unpaired (KTO) data: one answer a row with a thumbs up or down; `labels` counts them {"up": n, "down": m}.
    unpaired: bool = False
    labels: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PreferenceSet:
    pairs: list[dict]
    report: DataReport
    rows: list[int] | None = None  # each pair's 1-based row in the source, as `report.dropped` numbers rows

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def unpaired(self) -> bool:
        """True for KTO's single answers with a thumbs up or down (each item is {prompt, completion, label})."""
        return self.report.unpaired

    def unpair(self, seed: int) -> PreferenceSet:
        """Paired data as KTO reads it: each pair becomes its chosen answer with a thumbs up and its rejected answer
        with a thumbs down, in a seeded order (TRL's KTO samples in order, and estimates its KL term from the other
        answers of a batch: those had best come from other prompts)."""
        if self.unpaired:
            return self
        examples = [{"prompt": p["prompt"], "completion": p[part], "label": part == "chosen"}
                    for p in self.pairs for part in ("chosen", "rejected")]
        random.Random(seed).shuffle(examples)
        report = replace(self.report, pairs=len(examples), unpaired=True,
                         labels={"up": len(self.pairs), "down": len(self.pairs)})
        return PreferenceSet(examples, report)

    def split(self, eval_fraction: float, seed: int) -> tuple[PreferenceSet, PreferenceSet]:
        """Seeded shuffle into (train, eval); each part keeps the source's order.

        Pairs with the same prompt (once whitespace, case and edge punctuation are normalised) land on one
        side together, so a duplicate of a training pair is never held out. Groups are shuffled and taken
        until the eval size is met; where every prompt is distinct this is a plain seeded shuffle of pairs.
        """
        if not 0 <= eval_fraction < 1:
            raise DataError(f"The eval fraction must be at least 0 and below 1 (got {eval_fraction}).")
        n = len(self.pairs)
        n_eval = _eval_size(n, eval_fraction)
        if n_eval == 0:
            return self, self._subset([])
        groups: dict[str, list[int]] = {}
        for i, pair in enumerate(self.pairs):
            groups.setdefault(prompt_key(pair), []).append(i)
        order = list(groups.values())
        random.Random(seed).shuffle(order)
        held: list[int] = []
        for group in order:
            if len(held) >= n_eval:
                break
            # A whole group, if it fits (or nothing is held out yet), and never every pair.
            if (len(held) + len(group) <= n_eval or not held) and len(held) + len(group) < n:
                held += group
        chosen = set(held)
        return self._subset([i for i in range(n) if i not in chosen]), self._subset(sorted(held))

    def _subset(self, indices: list[int]) -> PreferenceSet:
        # The report still describes the source; only the pair count follows the subset.
        items = [self.pairs[i] for i in indices]
        rows = [self.rows[i] for i in indices] if self.rows is not None else None
        return PreferenceSet(items, replace(self.report, pairs=len(indices), labels=_labels(items, self.unpaired)), rows)

    def to_dataset(self):
        """A datasets.Dataset with conversational prompt/chosen/rejected columns (prompt/completion/label when
        unpaired)."""
        from datasets import Dataset, Features, List, Value

        message = {"role": Value("string"), "content": Value("string")}
        if self.unpaired:
            features = Features({"prompt": List(message), "completion": List(message), "label": Value("bool")})
            columns = {key: [item[key] for item in self.pairs] for key in ("prompt", "completion", "label")}
            return Dataset.from_dict(columns, features=features)
        # Explicit features so an empty set (e.g. a 0% eval split) still has typed columns.
        features = Features({key: List(message) for key in ("prompt", "chosen", "rejected")})
        columns = {key: [pair[key] for pair in self.pairs] for key in ("prompt", "chosen", "rejected")}
        return Dataset.from_dict(columns, features=features)


def _labels(items: list[dict], unpaired: bool) -> dict | None:
    if not unpaired:
        return None
    up = sum(1 for item in items if item["label"])
    return {"up": up, "down": len(items) - up}


def _eval_size(n: int, fraction: float) -> int:
    n_eval = round(n * fraction)
    if fraction > 0 and n >= 2:
        n_eval = max(1, n_eval)
    # Training needs at least one pair, whatever the fraction.
    return min(n_eval, max(n - 1, 0))




def load_preferences(
    source: str | Path,
    columns: Columns | None = None,
    tokenizer=None,
    max_length: int | None = None,
    split: str = "train",
) -> PreferenceSet:
    """Read, detect, normalise and (with a tokenizer) measure a preference data set."""
    mapping = columns or Columns()
    read = read_source(source, split)
    fmt, name, records, dropped = read.fmt, read.name, read.records, read.faults
    rows = len(records) + len(dropped)  # rows that failed to parse were still read
    if not records:
        _raise_nothing_usable(name, rows, dropped)
    found = column_names(records)
    plan = make_plan(records, found, mapping, fmt, name)

    kept: list[tuple[int, dict]] = []
    for row, record in records:
        try:
            kept.append((row, normalise(record, plan)))
        except RowFault as fault:
            dropped.append({"row": row, "reason": str(fault)})

    tokens = None
    if tokenizer is not None:
        measured, too_long = measure_prompts(kept, tokenizer, max_length)
        dropped.extend(too_long)
        kept = [(row, pair) for row, pair, _ in measured]
        tokens = token_stats([pair for _, pair in kept], [length for *_, length in measured], tokenizer)

    dropped.sort(key=lambda d: d["row"])
    if not kept:
        _raise_nothing_usable(name, rows, dropped, plan)
    report = DataReport(
        source=str(source), format=fmt, layout=plan.layout, columns=found,
        rows=rows, pairs=len(kept), dropped=dropped, tokens=tokens,
        used=plan.used(), notes=read.notes + plan.notes, unpaired=plan.unpaired,
        labels=_labels([item for _, item in kept], plan.unpaired),
    )
    return PreferenceSet([pair for _, pair in kept], report, [row for row, _ in kept])


def _raise_nothing_usable(name: str, rows: int, dropped: list[dict], plan: "Plan | None" = None) -> None:
    if rows == 0:
        raise DataError(f"No rows found in {name}: the file holds no records.")
    reasons = "; ".join(f"row {d['row']}: {d['reason']}" for d in sorted(dropped, key=lambda d: d["row"])[:5])
    what = "thumbs-up/down examples" if plan is not None and plan.unpaired else "preference pairs"
    raise NoUsablePairs(
        f"No usable {what} in {name}: {rows} rows read, all dropped. First reasons: {reasons}",
        rows, sorted(dropped, key=lambda d: d["row"]), plan.layout if plan else None, plan.used() if plan else None)



# --------------------------------------------------------------------------- peeking and per-pair lengths
# For the web app: raw rows to show beside an unknown layout, and one length per pair for histograms.


def peek(source: str | Path, limit: int = 5) -> tuple[list[str], list[dict]]:
    """The columns found and the first `limit` raw records of a local file, read as load_preferences reads it."""
    try:
        exists = Path(source).exists()
    except (OSError, ValueError):  # a NUL byte or an overlong name
        exists = False
    if not exists:
        raise DataError(f"file not found: {shown(str(source))}")
    read = read_source(source, "train")
    return column_names(read.records), [record for _, record in read.records[:limit]]
