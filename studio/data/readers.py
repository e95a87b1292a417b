"""Read a data file (JSONL, JSON, CSV, Parquet) or a hub dataset into numbered records.

Each reader returns [(row_number, record)] plus the rows it could not parse, so a bad line costs one row,
not the whole file. Nothing is opened before os.stat says it is a regular file under the size cap.
pyarrow and datasets are imported where used (deferred: `data check` on a JSONL file must answer fast).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import os
import re
import stat
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .budget import check_rows, check_text, read_parquet
from .text import one_line, shown, type_name, undecoded_byte

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}

# A data file larger than this is refused before it is read (STUDIO_MAX_DATA_MB overrides it).
DEFAULT_MAX_DATA_MB = 1024

# A hub id as the hub spells one: owner/name of letters, digits, "-", "_", "."; no "..", no leading or
# trailing "." or "-". Anything else ("/tmp/x", "../etc/passwd", "a/b/c") is a path, never an id.
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"{_HUB_PART}/{_HUB_PART}")
_JSON_RECORD_KEYS = ("data", "train", "rows", "records", "examples", "items")


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


def read_source(source: str | Path, split: str) -> _Read:
    text = str(source)
    path = Path(source)
    name = shown(path.name or text)
    try:
        info = os.stat(path)  # follows symlinks: what counts is what the link leads to
    except FileNotFoundError:
        if is_hub_id(text):
            return _Read("hub", text, *_read_hub(text, split), [])
        raise DataError(f"file not found: {shown(text)}") from None
    except (OSError, ValueError) as exc:  # a loop of links, a name too long, a NUL byte in the path
        reason = getattr(exc, "strerror", None) or str(exc)
        raise DataError(f"Cannot read {shown(text)}: {reason}.") from None
    if stat.S_ISDIR(info.st_mode):
        raise DataError(f"{name} is a folder; give a data file (JSONL, JSON, CSV or Parquet).")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"Cannot read {name}: unknown file type '{shown(path.suffix) or '(none)'}'. "
            "Accepted formats: .jsonl / .ndjson, .json, .csv, .parquet, or a hub dataset id like owner/name."
        )
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{name} is not a regular file ({file_kind(info.st_mode)}); give a data file.")
    data = _read_bytes(path, name)
    if not data or data.isspace():  # isspace, not strip: no copy of a file that may be a gigabyte
        raise DataError(f"{name} is empty: it holds no records.")
    if fmt != "parquet":
        check_text(data, name, fmt)  # the decoded-text and row budget, before decoding
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


def loads(text: str):
    """json.loads for data files: duplicate keys are marked, and every failure is a ValueError."""
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise ValueError("nested too deeply (arrays or objects inside each other hundreds of levels deep)") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise ValueError(str(exc).split(";")[0]) from None


def json_fault(exc: ValueError) -> str:
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
        bad_byte = None if line.isascii() else undecoded_byte(line)
        if bad_byte is not None:
            faults.append({"row": number, "reason": f"not UTF-8 text (byte 0x{bad_byte:02x}); re-save the file as UTF-8"})
            continue
        try:
            value = loads(line)
        except ValueError as exc:
            faults.append({"row": number, "reason": json_fault(exc)})
            continue
        fault = _record_fault(value)
        if fault:
            faults.append({"row": number, "reason": fault})
            continue
        records.append((number, value))
    return records, faults


def _record_fault(value) -> str | None:
    if not isinstance(value, dict):
        return f"not a JSON object (got {type_name(value)})"
    if isinstance(value, _DuplicateKeys):
        return "; ".join(f"key '{shown(key)}' appears twice in the object" for key in value.duplicates)
    return None


def _parse_json(text: str, name: str) -> tuple[list[tuple[int, dict]] | None, list[dict]]:
    """Returns (None, []) when the file looks like JSON Lines instead."""
    try:
        value = loads(text)
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
        return isinstance(loads(first), dict)
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
        f"under a key like \"data\"; found {type_name(value)}"
        + (f" with keys {', '.join(shown(k) for k in value)}." if isinstance(value, dict) else ".")
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
        header = [shown(cell.strip()) for cell in header]
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
    try:
        table = read_parquet(data, name)  # stops past the decoded-text budget
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for damaged files
        raise DataError(f"Cannot read {name} as Parquet (truncated or corrupt file?): {one_line(exc)}") from None
    counts = Counter(table.column_names)
    duplicated = [column for column, n in counts.items() if n > 1]
    if duplicated:
        raise DataError(f"In {name}, column '{shown(duplicated[0])}' appears {counts[duplicated[0]]} times; "
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


def column_names(records: list[tuple[int, dict]]) -> list[str]:
    seen: dict[str, None] = {}
    for _, record in records:
        for key in record:
            seen.setdefault(shown(str(key)), None)
    return list(seen)
