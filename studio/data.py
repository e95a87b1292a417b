"""Turn a preference-data file or hub dataset into clean, TRL-ready DPO pairs.

One job: read the data, work out its layout, normalise every usable row to TRL's
conversational preference form and account for every row that could not be used
(row number + reason). Token statistics and a seeded train/eval split ride along
because they are questions about the same pairs.

Heavy libraries (datasets, pyarrow, transformers) are imported inside the
functions that need them so that `import studio.data` stays instant for the CLI.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from .errors import DataError  # noqa: F401 - re-exported: callers catch it from here

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
ROLES = ("system", "user", "assistant")

# Column names recognised without a mapping, in order of preference.
PROMPT_NAMES = ("prompt", "instruction", "question")
CHOSEN_NAMES = ("chosen",)
REJECTED_NAMES = ("rejected",)
SYSTEM_NAMES = ("system",)
INPUT_NAME = "input"

# Only used to *suggest* a mapping in an error message, never to load silently:
# a wrong guess about which answer is the preferred one would train the model backwards.
_GUESS_WORDS = {
    "prompt": {"prompt", "instruction", "question", "query", "input", "context", "request", "user", "human"},
    "chosen": {"chosen", "good", "better", "best", "preferred", "accepted", "positive", "winner"},
    "rejected": {"rejected", "bad", "worse", "worst", "dispreferred", "negative", "loser"},
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_JSON_RECORD_KEYS = ("data", "train", "rows", "records", "examples", "items")




class _RowFault(Exception):
    """Why one row cannot be used; becomes an entry in DataReport.dropped."""


@dataclass
class Columns:
    """Explicit column mapping; a field left as None is auto-detected."""

    prompt: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    system: str | None = None

    def given(self) -> bool:
        return any(v for v in (self.prompt, self.chosen, self.rejected, self.system))

    @classmethod
    def from_config(cls, cfg) -> "Columns":
        return cls(cfg.prompt_col, cfg.chosen_col, cfg.rejected_col, cfg.system_col)


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

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PreferenceSet:
    pairs: list[dict]
    report: DataReport

    def __len__(self) -> int:
        return len(self.pairs)

    def split(self, eval_fraction: float, seed: int) -> tuple[PreferenceSet, PreferenceSet]:
        """Seeded shuffle into (train, eval); each part keeps the source's order."""
        if not 0 <= eval_fraction < 1:
            raise DataError(f"The eval fraction must be at least 0 and below 1 (got {eval_fraction}).")
        n = len(self.pairs)
        n_eval = _eval_size(n, eval_fraction)
        if n_eval == 0:
            return self, self._subset([])
        order = list(range(n))
        random.Random(seed).shuffle(order)
        return self._subset(sorted(order[n_eval:])), self._subset(sorted(order[:n_eval]))

    def _subset(self, indices: list[int]) -> PreferenceSet:
        # The report still describes the source; only the pair count follows the subset.
        return PreferenceSet([self.pairs[i] for i in indices], replace(self.report, pairs=len(indices)))

    def to_dataset(self):
        """A datasets.Dataset with conversational prompt/chosen/rejected columns."""
        from datasets import Dataset, Features, List, Value

        message = {"role": Value("string"), "content": Value("string")}
        # Explicit features so an empty set (e.g. a 0% eval split) still has typed columns.
        features = Features({key: List(message) for key in ("prompt", "chosen", "rejected")})
        columns = {key: [pair[key] for pair in self.pairs] for key in ("prompt", "chosen", "rejected")}
        return Dataset.from_dict(columns, features=features)


def _eval_size(n: int, fraction: float) -> int:
    n_eval = round(n * fraction)
    if fraction > 0 and n >= 2:
        n_eval = max(1, n_eval)
    # Training needs at least one pair, whatever the fraction.
    return min(n_eval, max(n - 1, 0))


# --------------------------------------------------------------------------- entry point


def load_preferences(
    source: str | Path,
    columns: Columns | None = None,
    tokenizer=None,
    max_length: int | None = None,
    split: str = "train",
) -> PreferenceSet:
    """Read, detect, normalise and (with a tokenizer) measure a preference data set."""
    mapping = columns or Columns()
    fmt, name, records, dropped = _read_source(source, split)
    rows = len(records) + len(dropped)  # rows that failed to parse were still read
    if not records:
        _raise_nothing_usable(name, rows, dropped)
    found = _column_names(records)
    plan = _make_plan(records, found, mapping, fmt, name)

    kept: list[tuple[int, dict]] = []
    for row, record in records:
        try:
            kept.append((row, _normalise(record, plan)))
        except _RowFault as fault:
            dropped.append({"row": row, "reason": str(fault)})

    tokens = None
    if tokenizer is not None:
        measured, too_long = _measure_prompts(kept, tokenizer, max_length)
        dropped.extend(too_long)
        kept = [(row, pair) for row, pair, _ in measured]
        tokens = _token_stats([pair for _, pair in kept], [length for *_, length in measured], tokenizer)

    dropped.sort(key=lambda d: d["row"])
    if not kept:
        _raise_nothing_usable(name, rows, dropped)
    report = DataReport(
        source=str(source), format=fmt, layout=plan.layout, columns=found,
        rows=rows, pairs=len(kept), dropped=dropped, tokens=tokens,
    )
    return PreferenceSet([pair for _, pair in kept], report)


def _raise_nothing_usable(name: str, rows: int, dropped: list[dict]) -> None:
    if rows == 0:
        raise DataError(f"No rows found in {name}: the file holds no records.")
    reasons = "; ".join(f"row {d['row']}: {d['reason']}" for d in sorted(dropped, key=lambda d: d["row"])[:5])
    raise DataError(
        f"No usable preference pairs in {name}: {rows} rows read, all dropped. First reasons: {reasons}"
    )


# --------------------------------------------------------------------------- readers
# Each reader returns [(row_number, record)] plus the rows it could not parse as
# dropped entries, so a bad line costs one row, not the whole file.


def _read_source(source: str | Path, split: str) -> tuple[str, str, list[tuple[int, dict]], list[dict]]:
    path = Path(source)
    if not path.exists():
        if path.suffix.lower() not in FORMATS and _HUB_ID.match(str(source)):
            return ("hub", str(source), *_read_hub(str(source), split))
        raise DataError(f"file not found: {source}")
    if path.is_dir():
        raise DataError(f"{source} is a folder; give a data file (JSONL, JSON, CSV or Parquet).")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"Cannot read {path.name}: unknown file type '{path.suffix or '(none)'}'. "
            "Accepted formats: .jsonl / .ndjson, .json, .csv, .parquet, or a hub dataset id like owner/name."
        )
    if fmt == "parquet":
        return (fmt, path.name, *_read_parquet(path))
    text = _read_text(path)
    reader = {"jsonl": _parse_jsonl, "json": _parse_json, "csv": _parse_csv}[fmt]
    records, faults = reader(text, path.name)
    if fmt == "json" and records is None:
        # A .json file that is really JSON Lines is a common mix-up; read it as such.
        fmt = "jsonl"
        records, faults = _parse_jsonl(text, path.name)
    return fmt, path.name, records, faults


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"Cannot read {path.name}: {exc.strerror or exc}") from None
    bom = b"\xef\xbb\xbf"
    skipped = len(bom) if data.startswith(bom) else 0
    try:
        return data[skipped:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start + skipped
        line = data.count(b"\n", 0, offset) + 1
        raise DataError(
            f"{path.name} is not UTF-8 text: byte 0x{data[offset]:02x} at byte offset {offset} (line {line}) "
            "is not valid UTF-8. Re-save the file with UTF-8 encoding and try again."
        ) from None


def _parse_jsonl(text: str, name: str) -> tuple[list[tuple[int, dict]], list[dict]]:
    records, faults = [], []
    # split("\n"), not splitlines(): JSON strings may hold U+2028 etc., which must not shift line numbers.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            faults.append({"row": number, "reason": f"not valid JSON: {exc.msg} (column {exc.colno})"})
            continue
        if not isinstance(value, dict):
            faults.append({"row": number, "reason": f"not a JSON object (got {_type_name(value)})"})
            continue
        records.append((number, value))
    return records, faults


def _parse_json(text: str, name: str) -> tuple[list[tuple[int, dict]] | None, list[dict]]:
    """Returns (None, []) when the file looks like JSON Lines instead."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and _first_line_is_object(text):
            return None, []
        raise DataError(
            f"{name} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno} "
            "(is the file truncated?)."
        ) from None
    items = _json_records(value, name)
    records, faults = [], []
    for number, item in enumerate(items, 1):
        if isinstance(item, dict):
            records.append((number, item))
        else:
            faults.append({"row": number, "reason": f"not a JSON object (got {_type_name(item)})"})
    return records, faults


def _first_line_is_object(text: str) -> bool:
    first = next((line for line in text.split("\n") if line.strip()), "")
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _json_records(value, name: str) -> list:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        lists = {k: v for k, v in value.items() if isinstance(v, list)}
        if len(lists) == 1:
            return next(iter(lists.values()))
        for key in _JSON_RECORD_KEYS:
            if key in lists:
                return lists[key]
    raise DataError(
        f"{name} should hold an array of objects (one per pair), or an object with one list of them "
        f"under a key like \"data\"; found {_type_name(value)}"
        + (f" with keys {', '.join(map(str, value))}." if isinstance(value, dict) else ".")
    )


def _parse_csv(text: str, name: str) -> tuple[list[tuple[int, dict]], list[dict]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    records = []
    try:
        for number, row in enumerate(reader, 1):
            row.pop(None, None)  # cells beyond the header have no column to belong to
            records.append((number, row))
    except csv.Error as exc:
        raise DataError(f"Cannot read {name} as CSV: {exc} (line {reader.line_num}).") from None
    if not reader.fieldnames:
        raise DataError(f"No rows found in {name}: the CSV file is empty (no header line).")
    return records, []


def _read_parquet(path: Path) -> tuple[list[tuple[int, dict]], list[dict]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for damaged files
        raise DataError(f"Cannot read {path.name} as Parquet (truncated or corrupt file?): {exc}") from None
    return list(enumerate(rows, 1)), []


def _read_hub(dataset_id: str, split: str) -> tuple[list[tuple[int, dict]], list[dict]]:
    import datasets

    try:
        data = datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:
        raise _hub_error(dataset_id, split, exc) from None
    return list(enumerate(data.to_list(), 1)), []


def _hub_error(dataset_id: str, split: str, exc: Exception) -> DataError:
    names = " ".join(cls.__name__ for cls in type(exc).__mro__)
    if isinstance(exc, ConnectionError) or re.search(r"Offline|Connection|Timeout", names):
        return DataError(
            f"Could not reach the Hugging Face dataset hub to load '{dataset_id}' (offline or no network). "
            "Download the dataset's data file (JSONL, JSON, CSV or Parquet) where you have network access "
            "and upload the file instead."
        )
    if "DatasetNotFoundError" in names:
        return DataError(f"Dataset '{dataset_id}' was not found on the Hugging Face hub (or it is private/gated).")
    return DataError(f"Could not load split '{split}' of hub dataset '{dataset_id}': {exc}")


def _column_names(records: list[tuple[int, dict]]) -> list[str]:
    seen: dict[str, None] = {}
    for _, record in records:
        for key in record:
            seen.setdefault(str(key), None)
    return list(seen)


# --------------------------------------------------------------------------- layout detection


@dataclass
class _Plan:
    """Which column plays which part and how the answers are stored."""

    chosen: str
    rejected: str
    prompt: str | None
    system: str | None
    input: str | None
    answers: str  # "text" | "messages" | "transcript"
    layout: str
    fmt: str


def _make_plan(records, found: list[str], mapping: Columns, fmt: str, name: str) -> _Plan:
    _check_mapping(mapping, found, name)
    chosen = mapping.chosen or _find(found, CHOSEN_NAMES)
    rejected = mapping.rejected or _find(found, REJECTED_NAMES)
    prompt = mapping.prompt or _find(found, PROMPT_NAMES)
    system = mapping.system or _find(found, SYSTEM_NAMES)
    if not chosen or not rejected:
        raise _unknown_layout(name, found)

    sample = _first_value(records, chosen)
    messages = _as_messages(sample, fmt)
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
    return _Plan(chosen, rejected, prompt, system, input_col, answers, layout, fmt)


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


def _as_messages(value, fmt: str) -> list | None:
    """The value as a message list, decoding CSV cells that hold a JSON list; else None."""
    if isinstance(value, list):
        return value
    if fmt == "csv" and isinstance(value, str) and value.lstrip().startswith("["):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
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
        return DataError(f"{message}, e.g. {guess}")
    return DataError(
        f"{message}. Recognised without a mapping: prompt/chosen/rejected, instruction[/input]/chosen/rejected, "
        "question/chosen/rejected, chosen/rejected conversations, or chosen/rejected Human:/Assistant: transcripts."
    )


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


# --------------------------------------------------------------------------- row normalisation


def _normalise(record: dict, plan: _Plan) -> dict:
    if plan.answers == "text":
        prompt, chosen, rejected = _text_row(record, plan)
    elif plan.answers == "messages":
        prompt, chosen, rejected = _messages_row(record, plan)
    else:
        prompt, chosen, rejected = _transcript_row(record, plan)
    prompt = _with_system(prompt, record, plan.system)
    _check_prompt(prompt)
    if chosen.strip() == rejected.strip():
        raise _RowFault("chosen is identical to rejected")
    return {"prompt": prompt, "chosen": [_assistant(chosen)], "rejected": [_assistant(rejected)]}


def _text_row(record: dict, plan: _Plan) -> tuple[list[dict], str, str]:
    prompt = _prompt_messages(record, plan)
    chosen = _text(_value(record, plan.chosen, "chosen"), "chosen")
    rejected = _text(_value(record, plan.rejected, "rejected"), "rejected")
    return prompt, chosen, rejected


def _messages_row(record: dict, plan: _Plan) -> tuple[list[dict], str, str]:
    chosen_context, chosen = _split_answer(_conversation(record, plan.chosen, "chosen", plan.fmt), "chosen")
    rejected_context, rejected = _split_answer(
        _conversation(record, plan.rejected, "rejected", plan.fmt), "rejected"
    )
    if _turn_keys(chosen_context) != _turn_keys(rejected_context):
        raise _RowFault("chosen and rejected differ before the final assistant message (the prompt must be shared)")
    if not chosen_context:
        if not plan.prompt:
            raise _RowFault("prompt is missing: chosen holds only the answer and there is no prompt column")
        return _prompt_messages(record, plan), chosen, rejected
    # A separate prompt *string* (UltraFeedback) repeats the conversation's first turn; a prompt
    # *message list* (TRL) is the start of the conversation that chosen/rejected continue.
    head = _as_messages(record.get(plan.prompt), plan.fmt) if plan.prompt else None
    prompt = _messages(head, "prompt") + chosen_context if head else chosen_context
    return prompt, chosen, rejected


def _transcript_row(record: dict, plan: _Plan) -> tuple[list[dict], str, str]:
    chosen_context, chosen = _split_answer(_transcript(record, plan.chosen, "chosen"), "chosen")
    rejected_context, rejected = _split_answer(_transcript(record, plan.rejected, "rejected"), "rejected")
    if _turn_keys(chosen_context) != _turn_keys(rejected_context):
        raise _RowFault("chosen and rejected differ before the final Assistant turn (the prompt must be shared)")
    if not chosen_context:
        raise _RowFault("prompt is empty: chosen has no Human turn before the final Assistant turn")
    return _messages(chosen_context, "prompt"), chosen, rejected


def _prompt_messages(record: dict, plan: _Plan) -> list[dict]:
    value = _value(record, plan.prompt, "prompt")
    listed = _as_messages(value, plan.fmt)
    if listed is not None:
        return _messages(listed, "prompt")
    text = _text(value, "prompt")
    extra = record.get(plan.input) if plan.input else None
    if extra is not None and not isinstance(extra, str):
        raise _RowFault(f"input is not text (got {_type_name(extra)})")
    if extra and extra.strip():
        text = f"{text}\n\n{extra}"
    return [{"role": "user", "content": text}]


def _conversation(record: dict, column: str, part: str, fmt: str) -> list[dict]:
    value = _value(record, column, part)
    if fmt == "csv" and isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise _RowFault(f"{part} is not a valid JSON message list: {exc.msg}") from None
    if not isinstance(value, list):
        raise _RowFault(f"{part} is not a message list (got {_type_name(value)})")
    return _messages(value, part)


def _transcript(record: dict, column: str, part: str) -> list[dict]:
    text = _text(_value(record, column, part), part).strip()
    pieces = _TURN.split(text)
    if pieces[0].strip() or len(pieces) < 3:
        raise _RowFault(f"{part} is not a Human:/Assistant: transcript")
    return [
        {"role": "user" if speaker == "Human" else "assistant", "content": body.strip()}
        for speaker, body in zip(pieces[1::2], pieces[2::2])
    ]


def _split_answer(messages: list[dict], part: str) -> tuple[list[dict], str]:
    last = messages[-1]
    if last["role"] != "assistant":
        raise _RowFault(f"{part}: last message is from '{last['role']}', expected 'assistant'")
    if not last["content"].strip():
        raise _RowFault(f"{part} is empty")
    return messages[:-1], last["content"]


def _messages(value: list, part: str) -> list[dict]:
    if not value:
        raise _RowFault(f"{part} is empty")
    out = []
    for number, message in enumerate(value, 1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise _RowFault(f"{part}: message {number} is not a {{role, content}} object")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise _RowFault(f"{part}: message {number} has unknown role {role!r}")
        if not isinstance(content, str):
            raise _RowFault(f"{part}: message {number} content is not text (got {_type_name(content)})")
        if not content.strip():
            raise _RowFault(f"{part}: message {number} has empty content")
        # Keep only role/content: extra keys would make Arrow columns ragged across rows.
        out.append({"role": role, "content": content})
    return out


def _with_system(prompt: list[dict], record: dict, column: str | None) -> list[dict]:
    if not column:
        return prompt
    value = record.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        return prompt
    if not isinstance(value, str):
        raise _RowFault(f"system is not text (got {_type_name(value)})")
    if prompt and prompt[0]["role"] == "system":
        return prompt  # the conversation's own system message is the more specific one
    return [{"role": "system", "content": value}] + prompt


def _check_prompt(prompt: list[dict]) -> None:
    last = prompt[-1]["role"]
    if last != "user":
        raise _RowFault(f"prompt: last message is from '{last}', expected 'user'")


def _value(record: dict, column: str, part: str):
    value = record.get(column)
    if value is None:
        raise _RowFault(f"{part} is missing")
    return value


def _text(value, part: str) -> str:
    if not isinstance(value, str):
        raise _RowFault(f"{part} is not text (got {_type_name(value)})")
    if not value.strip():
        raise _RowFault(f"{part} is empty")
    return value


def _turn_keys(messages: list[dict]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"].strip()) for m in messages]


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


# --------------------------------------------------------------------------- tokens


def _measure_prompts(kept, tokenizer, max_length: int | None):
    """Prompt lengths as the trainer will see them; drops the prompts it would drop anyway."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError(
            "The tokenizer has no chat template, so conversational prompts cannot be rendered. "
            "Pick a chat/instruct model or give the tokenizer a chat template."
        )
    measured, dropped = [], []
    for row, pair in kept:
        try:
            length = _prompt_tokens(tokenizer, pair["prompt"])
        except Exception as exc:  # templates raise on e.g. a system role they do not support
            dropped.append({"row": row, "reason": f"prompt could not be rendered with the chat template: {exc}"})
            continue
        if max_length is not None and length >= max_length:
            dropped.append({
                "row": row,
                "reason": f"prompt is {length} tokens, reaches max_length {max_length} (the trainer would drop it)",
            })
            continue
        measured.append((row, pair, length))
    return measured, dropped


def _prompt_tokens(tokenizer, messages: list[dict]) -> int:
    from .models import chat_ids

    return len(chat_ids(tokenizer, messages, add_generation_prompt=True))


def _token_stats(pairs: list[dict], prompt: list[int], tokenizer) -> dict | None:
    if not pairs:
        return None
    chosen = _answer_tokens(tokenizer, [pair["chosen"][0]["content"] for pair in pairs])
    rejected = _answer_tokens(tokenizer, [pair["rejected"][0]["content"] for pair in pairs])
    longest = [p + max(c, r) for p, c, r in zip(prompt, chosen, rejected)]
    return {"prompt": _stats(prompt), "chosen": _stats(chosen), "rejected": _stats(rejected), "pair": _stats(longest)}


def _answer_tokens(tokenizer, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _stats(values: list[int]) -> dict:
    ordered = sorted(values)
    # Nearest-rank percentile: always an observed length, no interpolation surprises.
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    return {"min": ordered[0], "mean": round(sum(ordered) / len(ordered), 1), "max": ordered[-1], "p95": p95}


# --------------------------------------------------------------------------- peeking and per-pair lengths
# For the web app: raw rows to show beside an unknown layout, and one length per pair for histograms.


def peek(source: str | Path, limit: int = 5) -> tuple[list[str], list[dict]]:
    """The columns found and the first `limit` raw records of a local file, read as load_preferences reads it."""
    if not Path(source).exists():
        raise DataError(f"file not found: {source}")
    _, _, records, _ = _read_source(source, "train")
    return _column_names(records), [record for _, record in records[:limit]]


def token_lengths(pairs: list[dict], tokenizer) -> dict[str, list[int]]:
    """Per-pair token counts (prompt as the chat template renders it, chosen, rejected), in pair order."""
    prompt = [_prompt_tokens(tokenizer, pair["prompt"]) for pair in pairs]
    chosen = _answer_tokens(tokenizer, [pair["chosen"][0]["content"] for pair in pairs]) if pairs else []
    rejected = _answer_tokens(tokenizer, [pair["rejected"][0]["content"] for pair in pairs]) if pairs else []
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected,
            "pair": [p + max(c, r) for p, c, r in zip(prompt, chosen, rejected)]}


# --- what a run reads --------------------------------------------------------------------------

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{}\n\n### Response:\n"
)


def load_run_data(cfg, tokenizer):
    """(all pairs of `data`, train pairs, held-out pairs) exactly as a run with this config uses them.

    The held-out pairs are `eval_data` when set, else a seeded `eval_fraction` of `data`; training
    and evaluation both call this, so an evaluation scores the very pairs training held out.
    """
    columns = Columns.from_config(cfg)
    data = load_preferences(cfg.data, columns, tokenizer=tokenizer, max_length=cfg.max_length)
    if cfg.eval_data:
        train, held_out = data, load_preferences(cfg.eval_data, columns, tokenizer=tokenizer, max_length=cfg.max_length)
    else:
        train, held_out = data.split(cfg.eval_fraction, cfg.seed)
    return data, train, held_out


def eval_source(cfg) -> str:
    """Where a run's held-out pairs come from, in words (the Train tab and data.json say it)."""
    return cfg.eval_data or f"{cfg.eval_fraction:.0%} of the training data (seed {cfg.seed})"


def check_sources(cfg) -> None:
    """Read the run's local data files now, without a tokenizer (fast), so a missing file, an unknown layout or
    a file with no usable pair is refused before a run starts. Hub ids are left to the run itself."""
    columns = Columns.from_config(cfg)
    for source in (cfg.data, cfg.eval_data):
        if source and (Path(source).exists() or Path(source).suffix.lower() in FORMATS):
            load_preferences(source, columns)


def to_trl(pairs, cfg):
    """The normalised pairs as a datasets.Dataset in the form the prompt template asks for."""
    if cfg.prompt_template == "chat":
        return pairs.to_dataset()
    from datasets import Dataset

    # The Handbook's recipe: an Alpaca instruction prompt and plain-text answers (TRL appends EOS).
    rows = []
    for p in pairs.pairs:
        users = [m["content"] for m in p["prompt"] if m["role"] == "user"]
        rows.append({"prompt": ALPACA_TEMPLATE.format(users[-1]), "chosen": p["chosen"][-1]["content"],
                     "rejected": p["rejected"][-1]["content"]})
    return Dataset.from_list(rows)
