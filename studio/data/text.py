"""Text read from a data file, made safe: per-field caps, undecodable bytes, and how a value is shown in a message."""

from __future__ import annotations

import re

# One text value (a prompt, an answer, a message) longer than this drops its row: no chat model
# here has a context near a million characters, and a runaway cell should cost one row, not the file.
MAX_FIELD_CHARS = 1_000_000
SURROGATE = re.compile("[\ud800-\udfff]")


class RowFault(Exception):
    """Why one row cannot be used; becomes an entry in DataReport.dropped."""



def check_size_and_bytes(value: str, part: str) -> None:
    if len(value) > MAX_FIELD_CHARS:
        raise RowFault(f"{part} holds {len(value):,} characters, over the limit of {MAX_FIELD_CHARS:,} per field")
    # A lone surrogate (a stray byte, or a JSON "\udcxx" escape) would break the tokenizer later.
    if not value.isascii() and SURROGATE.search(value):
        raise RowFault(f"{part} is not UTF-8 text (byte 0x{undecoded_byte(value):02x}); re-save the file as UTF-8")


def undecoded_byte(text: str) -> int | None:
    """The first byte that did not decode (kept as a surrogate escape), or None for clean text."""
    if text.isascii():  # the common case, checked in C without scanning for a pattern
        return None
    match = SURROGATE.search(text)
    if match is None:
        return None
    code = ord(match.group())
    return code - 0xDC00 if 0xDC80 <= code <= 0xDCFF else code


def shown(text: str) -> str:
    """Text from a file made safe to print and to send as JSON: undecodable bytes become \\xNN."""
    if undecoded_byte(text) is None:
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")  # the bytes as they were in the file
    except UnicodeEncodeError:  # a surrogate written as a JSON escape, not a stray byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def one_line(value) -> str:
    return " ".join(str(value).split())


def type_name(value) -> str:
    return "null" if value is None else type(value).__name__
