"""How much a data file may unpack to before it is read: a budget of decoded text and of rows.

A file's size on disk says little: a 99 KB Parquet file of repeated strings unpacks to 0.9 GB, and a 96 MB file of
a million short rows becomes millions of Python objects. The reader asks here first, from what it can learn
without unpacking (Parquet's footer: rows and uncompressed bytes per row group; a text file's length and line
count), and refuses with a message naming the file, what it would unpack to and the setting that raises the limit.

STUDIO_MAX_TEXT_MB (default 512): decoded text per data file. STUDIO_MAX_ROWS (default 500,000): records per file.
With both defaults a file that passes takes at most about 2 GB of memory to hold as rows (measured: see
docs/security.md); the largest public preference sets (UltraFeedback, HH-RLHF) are well inside both.
"""

from __future__ import annotations


from ..config import positive_env
from ..errors import DataError

DEFAULT_MAX_TEXT_MB = 512
DEFAULT_MAX_ROWS = 500_000


def max_text_bytes() -> int:
    return int(positive_env("STUDIO_MAX_TEXT_MB", DEFAULT_MAX_TEXT_MB, DataError) * 2**20)


def max_rows() -> int:
    return int(positive_env("STUDIO_MAX_ROWS", DEFAULT_MAX_ROWS, DataError))


def _over_text(name: str, size: int, how: str) -> DataError:
    return DataError(f"{name} {how} {size / 2**20:,.1f} MB of text, over the budget of "
                     f"{max_text_bytes() / 2**20:g} MB per data file (STUDIO_MAX_TEXT_MB raises it); "
                     "split the file or keep fewer rows.")


def _over_rows(name: str, rows: int) -> DataError:
    return DataError(f"{name} holds {rows:,} rows, over the limit of {max_rows():,} per data file "
                     "(STUDIO_MAX_ROWS raises it); split the file or keep fewer rows.")


def check_text(data: bytes, name: str, fmt: str) -> None:
    """Before decoding a JSONL / JSON / CSV file: its text (at most one character per byte) and, for JSON Lines,
    its line count."""
    if len(data) > max_text_bytes():
        raise _over_text(name, len(data), "holds")
    if fmt == "jsonl":
        lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
        if lines > max_rows():
            raise _over_rows(name, lines)


def check_rows(count: int, name: str) -> None:
    """After parsing a JSON document or a CSV file (their rows are not known before)."""
    if count > max_rows():
        raise _over_rows(name, count)


def check_parquet(data: bytes, name: str) -> None:
    """From the Parquet footer alone: rows, and the uncompressed size of every row group, before any is read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(pa.BufferReader(data)).metadata
    except Exception:  # noqa: BLE001 - a damaged file: the reader says so in its own words
        return
    if meta.num_rows > max_rows():
        raise _over_rows(name, meta.num_rows)
    unpacked = 0
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        # Column chunks' uncompressed sizes; a writer that leaves them out still reports the group's total.
        sizes = [group.column(j).total_uncompressed_size for j in range(group.num_columns)]
        unpacked += max(sum(sizes), group.total_byte_size)
        if unpacked > max_text_bytes():
            raise _over_text(name, unpacked, "unpacks to at least")


PARQUET_BATCH_ROWS = 256


def decoded_bytes(array) -> int:
    """What an Arrow column takes once every value is spelled out, as a list of rows becomes: a dictionary-encoded
    column counts each row's value, not the dictionary once."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(array, pa.ChunkedArray):
        return sum(decoded_bytes(chunk) for chunk in array.chunks)
    if pa.types.is_dictionary(array.type):
        values = array.dictionary
        if pa.types.is_string(values.type) or pa.types.is_binary(values.type) or \
                pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type):
            lengths = pc.take(pc.binary_length(values), array.indices)
            return int(pc.sum(lengths).as_py() or 0) + array.indices.nbytes
        return decoded_bytes(array.dictionary_decode())  # other value types: decode this batch's column only
    if isinstance(array, pa.StructArray):
        return sum(decoded_bytes(array.field(i)) for i in range(array.type.num_fields)) + (array.buffers()[0] or b"").__len__()
    if isinstance(array, (pa.ListArray, pa.LargeListArray)):
        return decoded_bytes(array.flatten()) + array.offsets.nbytes
    return array.nbytes


def read_parquet(data: bytes, name: str):
    """The file as a pyarrow Table, decoded a batch at a time so that the text budget stops it part-way.

    The footer's sizes are checked first, but they count pages after dictionary encoding: a column of one
    repeated string is a few bytes there and gigabytes decoded (and Arrow keeps it dictionary-encoded until the
    rows are listed). So each batch is counted as its rows will be spelled out (decoded_bytes), and reading
    stops at the first batch past the budget.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_parquet(data, name)
    parquet = pq.ParquetFile(pa.BufferReader(data))
    limit, decoded, batches = max_text_bytes(), 0, []
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        decoded += sum(decoded_bytes(column) for column in batch.columns)
        if decoded > limit:
            batches.clear()
            raise _over_text(name, decoded, "unpacks to at least")
        batches.append(batch)
    return pa.Table.from_batches(batches, schema=parquet.schema_arrow)
