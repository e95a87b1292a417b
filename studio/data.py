"""Turn a preference-data file or hub dataset into clean, TRL-ready DPO pairs.

One job: read the data, work out its layout, normalise every usable row to TRL's
conversational preference form and account for every row that could not be used
(row number + reason). Token statistics and a seeded train/eval split ride along
because they are questions about the same pairs.

Heavy libraries (datasets, pyarrow, transformers) are imported inside the
functions that need them so that `import studio.data` stays instant for the CLI.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import os
import random
import re
import stat
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
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

# A data file larger than this is refused before it is read (STUDIO_MAX_DATA_MB overrides it).
DEFAULT_MAX_DATA_MB = 1024
# One text value (a prompt, an answer, a message) longer than this drops its row: no chat model
# here has a context near a million characters, and a runaway cell should cost one row, not the file.
MAX_FIELD_CHARS = 1_000_000

# A hub id as the hub spells one: owner/name of letters, digits, "-", "_", "."; no "..", no leading or
# trailing "." or "-". Anything else ("/tmp/x", "../etc/passwd", "a/b/c") is a path, never an id.
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"{_HUB_PART}/{_HUB_PART}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_JSON_RECORD_KEYS = ("data", "train", "rows", "records", "examples", "items")


class _RowFault(Exception):
    """Why one row cannot be used; becomes an entry in DataReport.dropped."""


class UnknownLayout(DataError):
    """The columns holding the prompt and answers could not be told; `found` lists the file's columns."""

    def __init__(self, message: str, found: list[str]):
        super().__init__(message)
        self.found = found


class NoUsablePairs(DataError):
    """Rows were read but every one was dropped: `layout` and `used` say what was recognised (None when no row
    parsed), `dropped` lists each row with its reason."""

    def __init__(self, message: str, rows: int, dropped: list[dict], layout: str | None = None,
                 used: dict | None = None):
        super().__init__(message)
        self.rows, self.dropped, self.layout, self.used = rows, dropped, layout, used or {}


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
    used: dict[str, str] = field(default_factory=dict)  # part (prompt, chosen, ...) -> the column read for it
    notes: list[str] = field(default_factory=list)  # choices the reader made that the user should know about

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
    read = _read_source(source, split)
    fmt, name, records, dropped = read.fmt, read.name, read.records, read.faults
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
        _raise_nothing_usable(name, rows, dropped, plan)
    report = DataReport(
        source=str(source), format=fmt, layout=plan.layout, columns=found,
        rows=rows, pairs=len(kept), dropped=dropped, tokens=tokens,
        used=plan.used(), notes=read.notes + plan.notes,
    )
    return PreferenceSet([pair for _, pair in kept], report)


def _raise_nothing_usable(name: str, rows: int, dropped: list[dict], plan: "_Plan | None" = None) -> None:
    if rows == 0:
        raise DataError(f"No rows found in {name}: the file holds no records.")
    reasons = "; ".join(f"row {d['row']}: {d['reason']}" for d in sorted(dropped, key=lambda d: d["row"])[:5])
    raise NoUsablePairs(
        f"No usable preference pairs in {name}: {rows} rows read, all dropped. First reasons: {reasons}",
        rows, sorted(dropped, key=lambda d: d["row"]), plan.layout if plan else None, plan.used() if plan else None)


# --------------------------------------------------------------------------- readers
# Each reader returns [(row_number, record)] plus the rows it could not parse as
# dropped entries, so a bad line costs one row, not the whole file. Nothing is opened
# before os.stat says it is a regular file under the size cap: a FIFO would block the
# reader and /dev/zero would fill the memory.


@dataclass
class _Read:
    fmt: str
    name: str
    records: list[tuple[int, dict]]
    faults: list[dict]
    notes: list[str]


def is_hub_id(text: str) -> bool:
    """True for `owner/name` as the hub spells it, and only when no data suffix makes it look like a file."""
    text = text.strip()
    if not _HUB_ID.fullmatch(text) or ".." in text or "--" in text:
        return False
    return Path(text).suffix.lower() not in FORMATS


def max_file_bytes() -> int:
    """The largest data file read, from STUDIO_MAX_DATA_MB (default 1024)."""
    raw = os.environ.get("STUDIO_MAX_DATA_MB", "").strip()
    try:
        megabytes = float(raw) if raw else DEFAULT_MAX_DATA_MB
    except ValueError:
        megabytes = -1.0
    if not (math.isfinite(megabytes) and megabytes > 0):
        raise DataError(f"STUDIO_MAX_DATA_MB must be a positive number of megabytes, got {raw!r}.")
    return int(megabytes * 1024 * 1024)


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words, for a refusal."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((word for test, word in kinds if test(mode)), "not a plain file")


def _read_source(source: str | Path, split: str) -> _Read:
    text = str(source)
    path = Path(source)
    name = _shown(path.name or text)
    try:
        info = os.stat(path)  # follows symlinks: what counts is what the link leads to
    except FileNotFoundError:
        if is_hub_id(text):
            return _Read("hub", text, *_read_hub(text, split), [])
        raise DataError(f"file not found: {_shown(text)}") from None
    except (OSError, ValueError) as exc:  # a loop of links, a name too long, a NUL byte in the path
        reason = getattr(exc, "strerror", None) or str(exc)
        raise DataError(f"Cannot read {_shown(text)}: {reason}.") from None
    if stat.S_ISDIR(info.st_mode):
        raise DataError(f"{name} is a folder; give a data file (JSONL, JSON, CSV or Parquet).")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"Cannot read {name}: unknown file type '{_shown(path.suffix) or '(none)'}'. "
            "Accepted formats: .jsonl / .ndjson, .json, .csv, .parquet, or a hub dataset id like owner/name."
        )
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{name} is not a regular file ({file_kind(info.st_mode)}); give a data file.")
    data = _read_bytes(path, name)
    if not data or data.isspace():  # isspace, not strip: no copy of a file that may be a gigabyte
        raise DataError(f"{name} is empty: it holds no records.")
    if fmt != "parquet":
        from .budget import check_rows, check_text

        check_text(data, name, fmt)  # the text and row budget, before decoding (issue 21)
    if fmt == "parquet":
        return _Read(fmt, name, *_read_parquet(data, name), [])
    if fmt == "jsonl":
        text, notes = _decode(data, name, strict=False)
        return _Read(fmt, name, *_parse_jsonl(text), notes)
    text, notes = _decode(data, name, strict=True)
    if not text or text.isspace():
        raise DataError(f"{name} is empty: it holds no records.")
    if fmt == "csv":
        records, faults, csv_notes = _parse_csv(text, name)
        check_rows(len(records) + len(faults), name)
        return _Read(fmt, name, records, faults, notes + csv_notes)
    records, faults = _parse_json(text, name)
    check_rows(len(records or []) + len(faults), name)
    if records is None:
        # A .json file that is really JSON Lines is a common mix-up; read it as such.
        text, notes = _decode(data, name, strict=False)
        return _Read("jsonl", name, *_parse_jsonl(text), notes + ["read as JSON Lines (one object a line)"])
    return _Read(fmt, name, records, faults, notes)


def _read_bytes(path: Path, name: str) -> bytes:
    """The file's bytes, refusing anything but a regular file under the size cap."""
    limit = max_file_bytes()
    try:
        # O_NONBLOCK: should the name be swapped for a FIFO after os.stat, opening it still cannot block.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise DataError(f"Cannot read {name}: {exc.strerror or exc}.") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{name} is not a regular file ({file_kind(info.st_mode)}); give a data file.")
        if info.st_size > limit:
            raise DataError(_too_big(name, info.st_size, limit))
        try:
            data = handle.read(limit + 1)  # a file still growing cannot get past the cap either
        except OSError as exc:
            raise DataError(f"Cannot read {name}: {exc.strerror or exc}.") from None
    if len(data) > limit:
        raise DataError(_too_big(name, len(data), limit))
    return data


def _too_big(name: str, size: int, limit: int) -> str:
    return (f"{name} is {size / 2**20:.1f} MB, over the limit of {limit / 2**20:g} MB for a data file "
            "(set STUDIO_MAX_DATA_MB to raise it).")


def _decode(data: bytes, name: str, strict: bool) -> tuple[str, list[str]]:
    """Text of a data file: UTF-8 (BOM or not), or UTF-16 when a byte order mark says so.

    strict=False (JSON Lines) keeps undecodable bytes as surrogate escapes so that only the lines
    holding them are dropped; a CSV or JSON document is one piece, so a bad byte refuses it.
    """
    for bom, codec in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                       (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            try:
                return data.decode(codec), [f"read as {codec.upper()} (the file starts with its byte order mark)"]
            except UnicodeDecodeError as exc:
                raise DataError(f"{name} starts with a {codec.upper()} byte order mark but is not {codec.upper()} "
                                f"text (bad bytes at offset {exc.start}). Re-save it as UTF-8.") from None
    if b"\x00" in data:
        offset = data.index(b"\x00")
        line = data.count(b"\n", 0, offset) + 1
        raise DataError(
            f"{name} looks like a binary file, not text: it holds a NUL byte at byte offset {offset} "
            f"(line {line}). Give a JSONL, JSON or CSV text file in UTF-8 "
            "(UTF-16 without a byte order mark looks like this too: re-save it as UTF-8)."
        )
    skipped = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skipped:].decode("utf-8"), []
    except UnicodeDecodeError as exc:
        if not strict:
            return data[skipped:].decode("utf-8", errors="surrogateescape"), []
        offset = exc.start + skipped
        line = data.count(b"\n", 0, offset) + 1
        raise DataError(
            f"{name} is not UTF-8 text: byte 0x{data[offset]:02x} at byte offset {offset} (line {line}) "
            "is not valid UTF-8. Re-save the file with UTF-8 encoding and try again."
        ) from None


class _DuplicateKeys(dict):
    """A JSON object that named a key twice; json keeps the last value, the row is dropped instead."""

    duplicates: list[str]


def _json_object(pairs: list[tuple[str, object]]) -> dict:
    record = dict(pairs)
    if len(record) == len(pairs):
        return record
    record = _DuplicateKeys(record)
    counts = Counter(key for key, _ in pairs)
    record.duplicates = [key for key, n in counts.items() if n > 1]
    return record


_DECODER = json.JSONDecoder(object_pairs_hook=_json_object)


def _loads(text: str):
    """json.loads for data files: duplicate keys are marked, and every failure is a ValueError."""
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise ValueError("nested too deeply (arrays or objects inside each other hundreds of levels deep)") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise ValueError(str(exc).split(";")[0]) from None


def _json_fault(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc.msg} (column {exc.colno})"
    if str(exc).startswith("nested too deeply"):
        return str(exc)
    return f"not valid JSON: {exc}"


def _parse_jsonl(text: str) -> tuple[list[tuple[int, dict]], list[dict]]:
    records, faults = [], []
    # split("\n"), not splitlines(): JSON strings may hold U+2028 etc., which must not shift line numbers.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        bad_byte = None if line.isascii() else _undecoded_byte(line)
        if bad_byte is not None:
            faults.append({"row": number, "reason": f"not UTF-8 text (byte 0x{bad_byte:02x}); re-save the file as UTF-8"})
            continue
        try:
            value = _loads(line)
        except ValueError as exc:
            faults.append({"row": number, "reason": _json_fault(exc)})
            continue
        fault = _record_fault(value)
        if fault:
            faults.append({"row": number, "reason": fault})
            continue
        records.append((number, value))
    return records, faults


def _record_fault(value) -> str | None:
    if not isinstance(value, dict):
        return f"not a JSON object (got {_type_name(value)})"
    if isinstance(value, _DuplicateKeys):
        return "; ".join(f"key '{_shown(key)}' appears twice in the object" for key in value.duplicates)
    return None


def _parse_json(text: str, name: str) -> tuple[list[tuple[int, dict]] | None, list[dict]]:
    """Returns (None, []) when the file looks like JSON Lines instead."""
    try:
        value = _loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and _first_line_is_object(text):
            return None, []
        raise DataError(
            f"{name} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno} "
            "(is the file truncated?)."
        ) from None
    except ValueError as exc:
        prefix = f"{name} is" if str(exc).startswith("nested") else f"{name} is not valid JSON:"
        raise DataError(f"{prefix} {exc}.") from None
    items = _json_records(value, name)
    records, faults = [], []
    for number, item in enumerate(items, 1):
        fault = _record_fault(item)
        if fault:
            faults.append({"row": number, "reason": fault})
        else:
            records.append((number, item))
    return records, faults


def _first_line_is_object(text: str) -> bool:
    first = next((line for line in text.split("\n") if line.strip()), "")
    try:
        return isinstance(_loads(first), dict)
    except ValueError:
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
        + (f" with keys {', '.join(_shown(k) for k in value)}." if isinstance(value, dict) else ".")
    )


def _parse_csv(text: str, name: str) -> tuple[list[tuple[int, dict]], list[dict], list[str]]:
    # One long cell must cost its row (the per-field cap), not the file: lift the csv module's own limit
    # (131,072 characters by default). The file size cap still bounds every cell.
    csv.field_size_limit(max(csv.field_size_limit(), min(sys.maxsize, 2**31 - 1)))
    first_line = text.split("\n", 1)[0]
    delimiter = "," if "," in first_line else next((d for d in ("\t", ";") if d in first_line), ",")
    notes = [] if delimiter == "," else [f"separated by {'tabs' if delimiter == chr(9) else repr(delimiter)}, not commas"]
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{name} is empty: it holds no records.")
        header = [_shown(cell.strip()) for cell in header]
        _check_header(header, name)
        # Trailing unnamed columns (a trailing comma, Excel's empty columns) may be absent from a row.
        width = max((i + 1 for i, column in enumerate(header) if column), default=0)
        records, faults, number = [], [], 0
        for cells in reader:
            if not any(cells):
                continue  # a blank line is no row
            number += 1
            # Too few cells, or a filled cell past the header: the row's cells are shifted, so none can be trusted.
            if len(cells) < width or (len(cells) > len(header) and any(c.strip() for c in cells[len(header):])):
                count = len(cells) if len(cells) < width else max(i + 1 for i, c in enumerate(cells) if c.strip())
                faults.append({"row": number, "reason": f"has {count} cells, the header has {width} "
                               "(a comma or quote out of place?)"})
                continue
            records.append((number, {column: cell for column, cell in zip(header, cells) if column}))
    except csv.Error as exc:
        raise DataError(f"Cannot read {name} as CSV: {exc} (line {reader.line_num}).") from None
    if number == 0:
        raise DataError(f"{name} has a header line but no rows.")
    return records, faults, notes


def _check_header(header: list[str], name: str) -> None:
    named = [column for column in header if column]
    counts = Counter(named)
    for column, n in counts.items():
        if n > 1:
            places = [str(i + 1) for i, c in enumerate(header) if c == column]
            raise DataError(
                f"In {name}, column '{column}' appears {n} times in the header (columns {' and '.join(places)}); "
                "rename or remove the copies so that each column has one name."
            )


def _read_parquet(data: bytes, name: str) -> tuple[list[tuple[int, dict]], list[dict]]:
    from .budget import read_parquet

    try:
        table = read_parquet(data, name)  # stops past the decoded-text budget (issue 21)
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for damaged files
        raise DataError(f"Cannot read {name} as Parquet (truncated or corrupt file?): {_one_line(exc)}") from None
    counts = Counter(table.column_names)
    duplicated = [column for column, n in counts.items() if n > 1]
    if duplicated:
        raise DataError(f"In {name}, column '{_shown(duplicated[0])}' appears {counts[duplicated[0]]} times; "
                        "rename the copies so that each column has one name.")
    if table.num_rows == 0:
        raise DataError(f"No rows found in {name}: the Parquet file holds no rows.")
    return list(enumerate(table.to_pylist(), 1)), []


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
            seen.setdefault(_shown(str(key)), None)
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
    notes: list[str] = field(default_factory=list)

    def used(self) -> dict[str, str]:
        parts = {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected, "system": self.system,
                 "input": self.input}
        return {part: column for part, column in parts.items() if column}


def _make_plan(records, found: list[str], mapping: Columns, fmt: str, name: str) -> _Plan:
    _check_mapping(mapping, found, name)
    _check_case_twins(found, mapping, name)
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
    plan = _Plan(chosen, rejected, prompt, system, input_col, answers, layout, fmt)
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


def _plan_notes(plan: _Plan, found: list[str], mapping: Columns) -> list[str]:
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


def _as_messages(value, fmt: str) -> list | None:
    """The value as a message list, decoding CSV cells that hold a JSON list; else None."""
    if isinstance(value, list):
        return value
    if fmt == "csv" and isinstance(value, str) and value.lstrip().startswith("["):
        try:
            decoded = _loads(value)
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
        "question/chosen/rejected, chosen/rejected conversations, or chosen/rejected Human:/Assistant: transcripts.",
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
    if extra:
        _check_size_and_bytes(extra, "input")
    if extra and extra.strip():
        text = f"{text}\n\n{extra}"
    return [{"role": "user", "content": text}]


def _conversation(record: dict, column: str, part: str, fmt: str) -> list[dict]:
    value = _value(record, column, part)
    if fmt == "csv" and isinstance(value, str):
        try:
            value = _loads(value)
        except ValueError as exc:
            raise _RowFault(f"{part} is not a valid JSON message list: {_json_fault(exc)}") from None
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
        _check_size_and_bytes(content, f"{part}: message {number}")
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
    _check_size_and_bytes(value, "system")
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
    if isinstance(value, float) and math.isnan(value):
        raise _RowFault(f"{part} is missing (NaN)")
    return value


def _text(value, part: str) -> str:
    if not isinstance(value, str):
        raise _RowFault(f"{part} is not text (got {_type_name(value)})")
    if not value.strip():
        raise _RowFault(f"{part} is empty")
    _check_size_and_bytes(value, part)
    return value


def _check_size_and_bytes(value: str, part: str) -> None:
    if len(value) > MAX_FIELD_CHARS:
        raise _RowFault(f"{part} holds {len(value):,} characters, over the limit of {MAX_FIELD_CHARS:,} per field")
    # A lone surrogate (a stray byte, or a JSON "\udcxx" escape) would break the tokenizer later.
    if not value.isascii() and _SURROGATE.search(value):
        raise _RowFault(f"{part} is not UTF-8 text (byte 0x{_undecoded_byte(value):02x}); re-save the file as UTF-8")


def _undecoded_byte(text: str) -> int | None:
    """The first byte that did not decode (kept as a surrogate escape), or None for clean text."""
    if text.isascii():  # the common case, checked in C without scanning for a pattern
        return None
    match = _SURROGATE.search(text)
    if match is None:
        return None
    code = ord(match.group())
    return code - 0xDC00 if 0xDC80 <= code <= 0xDCFF else code


def _shown(text: str) -> str:
    """Text from a file made safe to print and to send as JSON: undecodable bytes become \\xNN."""
    if _undecoded_byte(text) is None:
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")  # the bytes as they were in the file
    except UnicodeEncodeError:  # a surrogate written as a JSON escape, not a stray byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _one_line(value) -> str:
    return " ".join(str(value).split())


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
    try:
        exists = Path(source).exists()
    except (OSError, ValueError):  # a NUL byte or an overlong name
        exists = False
    if not exists:
        raise DataError(f"file not found: {_shown(str(source))}")
    read = _read_source(source, "train")
    return _column_names(read.records), [record for _, record in read.records[:limit]]


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
