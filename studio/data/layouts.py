"""Which column plays which part: detect a file's layout from its columns, or follow a given mapping.

A layout is recognised by its column names and the shape of its first values, never guessed silently:
a wrong guess about which answer is the preferred one would train the model backwards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import DataError
from .readers import loads

# Column names recognised without a mapping, in order of preference.
PROMPT_NAMES = ("prompt", "instruction", "question")
CHOSEN_NAMES = ("chosen",)
REJECTED_NAMES = ("rejected",)
SYSTEM_NAMES = ("system",)
INPUT_NAME = "input"
COMPLETION_NAMES = ("completion",)
LABEL_NAMES = ("label",)
UNPAIRED_LAYOUT = "prompt/completion/label (unpaired, thumbs up or down)"
UNPAIRED_CONVERSATIONAL = "prompt/completion/label conversations (unpaired, thumbs up or down)"

# Only used to *suggest* a mapping in an error message, never to load silently.
_GUESS_WORDS = {
    "prompt": {"prompt", "instruction", "question", "query", "input", "context", "request", "user", "human"},
    "chosen": {"chosen", "good", "better", "best", "preferred", "accepted", "positive", "winner"},
    "rejected": {"rejected", "bad", "worse", "worst", "dispreferred", "negative", "loser"},
}


class UnknownLayout(DataError):
    """The columns holding the prompt and answers could not be told; `found` lists the file's columns."""

    def __init__(self, message: str, found: list[str]):
        super().__init__(message)
        self.found = found



@dataclass
class Columns:
    """Explicit column mapping; a field left as None is auto-detected."""

    prompt: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    system: str | None = None

    def given(self) -> bool:
        return any(v for v in (self.prompt, self.chosen, self.rejected, self.system))




# --------------------------------------------------------------------------- layout detection


@dataclass
class Plan:
    """Which column plays which part and how the answers are stored."""

    chosen: str
    rejected: str
    prompt: str | None
    system: str | None
    input: str | None
    answers: str  # "text" | "messages" | "transcript" | "unpaired" (KTO: chosen holds the completion column)
    layout: str
    fmt: str
    notes: list[str] = field(default_factory=list)
    label: str | None = None  # the thumbs up/down column of an unpaired file

    @property
    def unpaired(self) -> bool:
        return self.answers == "unpaired"

    def used(self) -> dict[str, str]:
        if self.unpaired:
            parts = {"prompt": self.prompt, "completion": self.chosen, "label": self.label, "system": self.system}
            return {part: column for part, column in parts.items() if column}
        parts = {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected, "system": self.system,
                 "input": self.input}
        return {part: column for part, column in parts.items() if column}


def make_plan(records, found: list[str], mapping: Columns, fmt: str, name: str) -> Plan:
    _check_mapping(mapping, found, name)
    _check_case_twins(found, mapping, name)
    chosen = mapping.chosen or _find(found, CHOSEN_NAMES)
    rejected = mapping.rejected or _find(found, REJECTED_NAMES)
    prompt = mapping.prompt or _find(found, PROMPT_NAMES)
    system = mapping.system or _find(found, SYSTEM_NAMES)
    if not (mapping.chosen or mapping.rejected) and not (chosen and rejected):
        if is_unpaired(found):  # KTO: one answer a row with a thumbs up or down
            return make_unpaired_plan(records, found, fmt, prompt, system)
    if not chosen or not rejected:
        raise _unknown_layout(name, found)

    sample = _first_value(records, chosen)
    messages = as_messages(sample, fmt)
    if messages is not None:
        answers = "messages"
        has_context = any(isinstance(m, dict) and m.get("role") != "assistant" for m in messages)
        if not prompt and not has_context:
            raise _unknown_layout(name, found)
        layout = "chosen/rejected conversations" if has_context else "conversational"
    elif prompt:
        answers = "text"
        layout = "instruction/input (Alpaca)" if prompt.lower() == "instruction" else "prompt/chosen/rejected strings"
    elif isinstance(sample, str) and "Human:" in sample and "Assistant:" in sample:
        answers, layout = "transcript", "implicit prompt (Human/Assistant)"
    else:
        raise _unknown_layout(name, found)

    input_col = _find(found, (INPUT_NAME,)) if prompt and prompt.lower() == "instruction" else None
    if mapping.given():
        layout = f"mapped columns ({layout})"
    plan = Plan(chosen, rejected, prompt, system, input_col, answers, layout, fmt)
    plan.notes = _plan_notes(plan, found, mapping)
    return plan


def _check_case_twins(found: list[str], mapping: Columns, name: str) -> None:
    """Refuse `chosen` beside `Chosen`: no order of preference can say which one is meant."""
    groups: dict[str, list[str]] = {}
    for column in found:
        groups.setdefault(column.strip().lower(), []).append(column)
    for part, names in (("prompt", PROMPT_NAMES), ("chosen", CHOSEN_NAMES), ("rejected", REJECTED_NAMES),
                        ("system", SYSTEM_NAMES), ("prompt", (INPUT_NAME,))):
        if getattr(mapping, part):
            continue
        for key in names:
            twins = groups.get(key, [])
            if len(twins) > 1:
                listed = " and ".join(f"'{c}'" for c in twins)
                raise DataError(f"{name} has both {listed} columns, so which one is the {part} is unclear; "
                                f"remove one, or say which with --{part}-col.")


def _plan_notes(plan: Plan, found: list[str], mapping: Columns) -> list[str]:
    notes = []
    if not mapping.prompt and plan.prompt:
        others = [c for c in found if c != plan.prompt and c.strip().lower() in PROMPT_NAMES]
        if others:
            listed = ", ".join(f"'{c}'" for c in others)
            notes.append(f"{listed} also looks like a prompt column and was not used; '{plan.prompt}' was "
                         "(pick another with --prompt-col)")
    unused = [c for c in found if c not in plan.used().values()]
    if unused:
        notes.append(f"columns not used: {', '.join(unused)}")
    return notes


def _check_mapping(mapping: Columns, found: list[str], name: str) -> None:
    for part in ("prompt", "chosen", "rejected", "system"):
        column = getattr(mapping, part)
        if column and column not in found:
            raise DataError(
                f"Column '{column}' (mapped as {part}) is not in {name}. Columns found: {', '.join(found)}."
            )


def _find(found: list[str], names: tuple[str, ...]) -> str | None:
    by_lower = {}
    for column in found:
        by_lower.setdefault(column.strip().lower(), column)
    return next((by_lower[n] for n in names if n in by_lower), None)


def _first_value(records, column: str):
    for _, record in records:
        value = record.get(column)
        if value is not None and not (isinstance(value, str) and not value.strip()):
            return value
    return None


def as_messages(value, fmt: str) -> list | None:
    """The value as a message list, decoding CSV cells that hold a JSON list; else None."""
    if isinstance(value, list):
        return value
    if fmt == "csv" and isinstance(value, str) and value.lstrip().startswith("["):
        try:
            decoded = loads(value)
        except ValueError:
            return None
        # Only a list of objects is a conversation; "[1] see note" style text stays text.
        if isinstance(decoded, list) and decoded and all(isinstance(m, dict) for m in decoded):
            return decoded
    return None


def _unknown_layout(name: str, found: list[str]) -> DataError:
    listed = ", ".join(found) if found else "(none)"
    message = (
        f"Could not tell which columns hold the prompt, chosen and rejected answers in {name}. "
        f"Columns found: {listed}. Map them with --prompt-col, --chosen-col, --rejected-col (and --system-col)"
    )
    guess = _guess_mapping(found)
    if guess:
        return UnknownLayout(f"{message}, e.g. {guess}", found)
    return UnknownLayout(
        f"{message}. Recognised without a mapping: prompt/chosen/rejected, instruction[/input]/chosen/rejected, "
        "question/chosen/rejected, chosen/rejected conversations, chosen/rejected Human:/Assistant: transcripts, "
        "or unpaired prompt/completion/label rows (a thumbs up or down, for objective kto).",
        found)


def guess_columns(found: list[str]) -> dict[str, str]:
    """part -> column a mapping form may start from: the names the reader knows, else a word in the name
    ("good_answer" for chosen). A suggestion for a person to confirm, never loaded without them."""
    picked: dict[str, str] = {}
    for part, names in (("prompt", PROMPT_NAMES), ("chosen", CHOSEN_NAMES), ("rejected", REJECTED_NAMES),
                        ("system", SYSTEM_NAMES)):
        column = _find(found, names)
        if column and column not in picked.values():
            picked[part] = column
    for part in ("chosen", "rejected", "prompt"):
        if part in picked:
            continue
        for column in found:
            words = set(re.split(r"[^a-z0-9]+", column.lower()))
            if column not in picked.values() and words & _GUESS_WORDS[part]:
                picked[part] = column
                break
    return picked


def _guess_mapping(found: list[str]) -> str | None:
    picked: dict[str, str] = {}
    for part in ("chosen", "rejected", "prompt"):
        for column in found:
            words = set(re.split(r"[^a-z0-9]+", column.lower()))
            if column not in picked.values() and words & _GUESS_WORDS[part]:
                picked[part] = column
                break
    if "chosen" not in picked or "rejected" not in picked:
        return None
    prompt = picked.get("prompt", "<prompt column>")
    return f"--prompt-col {prompt} --chosen-col {picked['chosen']} --rejected-col {picked['rejected']}"


# --- KTO's unpaired layout (one answer a row with a thumbs up or down; the thumbs are read in unpaired.py)


def is_unpaired(found: list[str]) -> bool:
    """True when the columns are KTO's: a completion and a label (and no chosen/rejected pair)."""
    return bool(_find(found, COMPLETION_NAMES) and _find(found, LABEL_NAMES))


def make_unpaired_plan(records, found: list[str], fmt: str, prompt: str | None, system: str | None) -> Plan:
    completion = _find(found, COMPLETION_NAMES)
    label = _find(found, LABEL_NAMES)
    prompt = prompt or _find(found, PROMPT_NAMES)
    messages = as_messages(_first_value(records, completion), fmt) is not None
    plan = Plan(chosen=completion, rejected=None, prompt=prompt, system=system, input=None,
                answers="unpaired", layout=UNPAIRED_CONVERSATIONAL if messages else UNPAIRED_LAYOUT, fmt=fmt, label=label)
    unused = [c for c in found if c not in {completion, label, prompt, system}]
    if unused:
        plan.notes.append(f"columns not used: {', '.join(unused)}")
    return plan
