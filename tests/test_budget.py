"""Issue 21's bounded reading: a budget of decoded text and rows stops a data file before it unpacks, whatever its
size on disk, with a message naming the file and the setting; the probes' peak memory is measured in a child."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from studio.data import load_preferences
from studio.errors import DataError

ROOT = Path(__file__).resolve().parent.parent
# The stated bound (docs/security.md): reading a refused file raises the child's peak resident memory above its
# baseline (the interpreter with studio.data and pyarrow imported) by at most the file's size plus this.
EXTRA_MB = 64


def bomb_parquet(path: Path, rows: int = 3000, width: int = 100_000) -> Path:
    """A Parquet file of a few KB on disk that decodes to rows * 3 * width characters (0.9 GB by default)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    indices = pa.array([0] * rows, type=pa.int32())
    columns = {key: pa.DictionaryArray.from_arrays(indices, pa.array([letter * width]))
               for key, letter in (("prompt", "p"), ("chosen", "c"), ("rejected", "r"))}
    pq.write_table(pa.table(columns), path, compression="zstd")
    return path


def million_rows_parquet(path: Path, rows: int = 1_000_000) -> Path:
    """About 96 MB of short, incompressible rows."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    def column():
        raw = os.urandom(rows * 16).hex()
        return pa.array([raw[i * 32:(i + 1) * 32] for i in range(rows)])

    pq.write_table(pa.table({"prompt": column(), "chosen": column(), "rejected": column()}), path,
                   compression="none")
    return path


def read_in_child(path: Path, env_extra: dict | None = None) -> tuple[str, float]:
    """(message or 'read N pairs', MB the peak RSS rose above the baseline) of load_preferences(path) in a fresh
    interpreter; the baseline is taken after the imports and after pyarrow's first Parquet read of a tiny file."""
    import os

    # VmHWM, not ru_maxrss: the latter is kept across exec, so a child would inherit the test process's peak.
    code = ("import sys\n"
            "def hwm():\n"
            "    line = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
            "    return int(line.split()[1]) / 1024\n"
            "from studio.data import load_preferences\n"
            "from studio.errors import DataError\n"
            "import pyarrow as pa, pyarrow.parquet as pq, io\n"
            "b = io.BytesIO(); pq.write_table(pa.table({'a': ['x']}), b); pq.read_table(pa.BufferReader(b.getvalue()))\n"
            "base = hwm()\n"
            "try:\n"
            "    s = load_preferences(sys.argv[1]); out = f'read {len(s.pairs)} pairs'\n"
            "except DataError as e:\n"
            "    out = str(e)\n"
            "peak = hwm()\n"
            "print(out); print(f'{base} {peak}')\n")
    env = {**os.environ, **(env_extra or {})}
    done = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    message, numbers = done.stdout.strip().rsplit("\n", 1)
    base, peak = map(float, numbers.split())
    print(f"[child RSS: {base:.0f} MB after imports, peak {peak:.0f} MB]", end=" ")
    return message, peak - base


@pytest.mark.subprocess
def test_a_small_parquet_that_unpacks_to_a_gigabyte_is_stopped(tmp_path):
    path = bomb_parquet(tmp_path / "bomb.parquet")
    assert path.stat().st_size < 200_000
    message, peak = read_in_child(path)
    assert "bomb.parquet unpacks to at least" in message and "STUDIO_MAX_TEXT_MB" in message
    assert peak < path.stat().st_size / 2**20 + EXTRA_MB, f"peak rose {peak:.0f} MB"
    print(f"bomb: {path.stat().st_size / 1024:.0f} KB on disk, peak +{peak:.0f} MB: {message}")


@pytest.mark.subprocess
def test_a_million_row_parquet_is_refused_from_its_footer(tmp_path):
    path = million_rows_parquet(tmp_path / "million.parquet")
    message, peak = read_in_child(path)
    assert "million.parquet holds 1,000,000 rows, over the limit of 500,000" in message
    assert "STUDIO_MAX_ROWS" in message
    assert peak < path.stat().st_size / 2**20 + EXTRA_MB, f"peak rose {peak:.0f} MB"
    print(f"million rows: {path.stat().st_size / 2**20:.0f} MB on disk, peak +{peak:.0f} MB: {message}")


def test_the_budget_is_a_setting_and_small_files_still_read(tmp_path, monkeypatch):
    small = bomb_parquet(tmp_path / "small.parquet", rows=4, width=10)
    assert len(load_preferences(small).pairs) == 4
    monkeypatch.setenv("STUDIO_MAX_TEXT_MB", "0.0001")  # about 100 bytes
    with pytest.raises(DataError, match="small.parquet unpacks to at least"):
        load_preferences(small)
    monkeypatch.setenv("STUDIO_MAX_TEXT_MB", "nan")
    with pytest.raises(DataError, match="STUDIO_MAX_TEXT_MB must be a positive number"):
        load_preferences(small)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_text_files_have_the_same_budget(tmp_path, monkeypatch, suffix):
    rows = [{"prompt": f"q{i}", "chosen": "yes", "rejected": "no"} for i in range(50)]
    path = tmp_path / f"pairs{suffix}"
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("prompt,chosen,rejected\n" + "".join(f"q{i},yes,no\n" for i in range(50)))
    assert len(load_preferences(path).pairs) == 50
    monkeypatch.setenv("STUDIO_MAX_ROWS", "20")
    with pytest.raises(DataError, match=rf"pairs{suffix} holds 50 rows, over the limit of 20 .*STUDIO_MAX_ROWS"):
        load_preferences(path)
    monkeypatch.delenv("STUDIO_MAX_ROWS")
    monkeypatch.setenv("STUDIO_MAX_TEXT_MB", "0.0002")  # about 200 bytes
    with pytest.raises(DataError, match=rf"pairs{suffix} holds .* MB of text, over the budget"):
        load_preferences(path)


def test_kept_uploads_have_a_total_cap_and_the_oldest_go_first(studio_home, tmp_path, monkeypatch):
    import os

    from studio.files import store_upload, uploads_dir

    monkeypatch.setenv("STUDIO_UPLOADS_MAX_MB", "0.03")  # about 31 KB: three 10 KB uploads fit, a fourth does not
    stored = []
    for n in range(5):
        source = tmp_path / f"up{n}.jsonl"
        source.write_text(json.dumps({"prompt": "q", "chosen": "a" * 10_000, "rejected": "b"}) + "\n")
        stored.append(store_upload(source, source.name))
        os.utime(stored[-1], (1_000_000 + n, 1_000_000 + n))  # distinct ages, oldest first
    left = sorted(p.name for p in uploads_dir().iterdir())
    assert left == sorted(p.name for p in stored[2:])  # the two oldest went, the newest three stay
    assert sum(p.stat().st_size for p in uploads_dir().iterdir()) <= 0.03 * 2**20
