"""The bad-input corpus: every malformed file or setting ends in one `error: …` line and exit 2, or
exit 0 with the bad rows reported by number; never a traceback, never a hang, never a run folder.

Data files go through `python -m studio data check FILE --no-tokens` in-process (studio.cli.main);
settings through `python -m studio train --set KEY=VALUE`. The web app is checked last: after a
batch of bad uploads it still answers, and a good file still goes through.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from studio import cli

GOOD = {"prompt": "Name a fruit.", "chosen": "An apple.", "rejected": "It is important to note that fruit exists."}


def good_rows(n: int) -> list[dict]:
    return [{**GOOD, "prompt": f"Name fruit number {i}."} for i in range(n)]


def jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def csv_text(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


@dataclass
class Case:
    """A file named `name` holding `content` (text, bytes, or made by `make(folder) -> path`)."""

    id: str
    name: str
    content: str | bytes | None = None
    code: int = 2
    says: tuple[str, ...] = ()  # fragments of the one error line (exit 2) or of stdout (exit 0)
    make: Callable[[Path], Path] | None = None
    args: tuple[str, ...] = ()
    env: dict = field(default_factory=dict)

    def build(self, folder: Path) -> Path:
        if self.make is not None:
            return self.make(folder)
        path = folder / self.name
        if isinstance(self.content, bytes):
            path.write_bytes(self.content)
        elif self.content is not None:
            path.write_text(self.content, encoding="utf-8")
        return path


def parquet(rows: list[dict], name: str = "data.parquet", cut: int = 0) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        import pandas as pd

        path = folder / name
        pd.DataFrame(rows).to_parquet(path)
        if cut:
            path.write_bytes(path.read_bytes()[:-cut])
        return path
    return make


def fifo(folder: Path) -> Path:
    path = folder / "pipe.jsonl"
    os.mkfifo(path)
    return path


def unix_socket(folder: Path) -> Path:
    # Bound by a name relative to the folder: AF_UNIX paths are limited to ~108 bytes, and pytest-xdist's
    # temporary folders are longer than that.
    with contextlib.chdir(folder), socket.socket(socket.AF_UNIX) as sock:
        sock.bind("s.jsonl")  # the socket file stays after the socket is closed
    return folder / "s.jsonl"


def link_to(target: str, name: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        path.symlink_to(target)
        return path
    return make


def folder_named(folder: Path) -> Path:
    path = folder / "rows.jsonl"
    path.mkdir()
    return path


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


HUGE_DIGITS = "9" * 5000
BIG_FIELD = "x" * 200_000  # over the csv module's default field limit (131,072), under the per-field cap
OVERSIZED = "y" * 1_000_001  # over the per-field cap of 1,000,000 characters


FILE_CASES = [
    # --- empty and header-only
    Case("empty-jsonl", "data.jsonl", "", says=("data.jsonl is empty",)),
    Case("blank-lines-jsonl", "data.jsonl", "\n\n   \n", says=("data.jsonl is empty",)),
    Case("empty-csv", "data.csv", "", says=("data.csv is empty",)),
    Case("empty-json", "data.json", "", says=("data.json is empty",)),
    Case("empty-parquet", "data.parquet", b"", says=("data.parquet is empty",)),
    Case("header-only-csv", "data.csv", csv_text("prompt,chosen,rejected"),
         says=("data.csv", "header", "no rows")),
    Case("empty-json-array", "data.json", "[]", says=("No rows found in data.json",)),
    Case("parquet-no-rows", "", make=parquet([]), says=("data.parquet", "no")),
    # --- JSON that is not a table
    Case("json-scalar-number", "data.json", "42", says=("data.json should hold an array of objects", "found int")),
    Case("json-scalar-string", "data.json", '"hello"', says=("data.json should hold an array", "found str")),
    Case("json-null", "data.json", "null", says=("data.json should hold an array", "found null")),
    Case("json-object-without-list", "data.json", '{"a": 1, "b": "c"}', says=("data.json", "keys a, b")),
    Case("json-truncated", "data.json", json.dumps(good_rows(3))[:-30], says=("data.json is not valid JSON", "line 1")),
    Case("json-deep-nesting", "data.json", deep_json(100_000), says=("data.json", "nested too deeply")),
    Case("json-huge-integer", "data.json", f'[{{"prompt": {HUGE_DIGITS}, "chosen": "a", "rejected": "b"}}]',
         says=("data.json is not valid JSON", "4300 digits")),
    Case("json-array-of-strings", "data.json", '["a", "b"]', says=("No usable preference pairs in data.json",
                                                                  "row 1: not a JSON object (got str)")),
    # --- not text, or not UTF-8
    Case("binary-garbage", "data.jsonl", bytes(range(256)) * 8, says=("data.jsonl", "binary")),
    Case("png-named-csv", "data.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 64, says=("data.csv", "binary")),
    Case("gzip-named-jsonl", "data.jsonl", gzip.compress(jsonl(*good_rows(3)).encode()), says=("data.jsonl", "binary")),
    Case("utf16-without-bom", "data.csv", csv_text("prompt,chosen,rejected", "Q,a,b").encode("utf-16-le"),
         says=("data.csv", "binary", "UTF-16")),
    Case("latin1-csv", "data.csv", csv_text("prompt,chosen,rejected", "Café?,oui,non").encode("latin-1"),
         says=("data.csv is not UTF-8 text", "line 2", "0xe9")),
    Case("latin1-json", "data.json", json.dumps(good_rows(1), ensure_ascii=False).replace("apple", "pommé")
         .encode("latin-1"), says=("data.json is not UTF-8 text", "0xe9")),
    Case("latin1-jsonl-all-lines", "data.jsonl", jsonl(*[{**r, "chosen": "Café"} for r in good_rows(2)])
         .replace("\\u00e9", "é").encode("latin-1"), says=("No usable preference pairs", "row 1: not UTF-8")),
    # --- special files
    Case("fifo", "", make=fifo, says=("pipe.jsonl is not a regular file", "named pipe")),
    Case("dev-zero-link", "", make=link_to("/dev/zero", "zero.jsonl"), says=("zero.jsonl is not a regular file", "device")),
    Case("dev-null-link", "", make=link_to("/dev/null", "null.csv"), says=("null.csv is not a regular file", "device")),
    Case("socket", "", make=unix_socket, says=("s.jsonl is not a regular file", "socket")),
    Case("folder-with-data-suffix", "", make=folder_named, says=("rows.jsonl is a folder",)),
    Case("broken-symlink", "", make=link_to("/nonexistent/target.jsonl", "gone.jsonl"), says=("file not found",)),
    Case("missing-file", "missing.jsonl", None, says=("file not found", "missing.jsonl")),
    Case("unknown-suffix", "data.txt", "prompt,chosen,rejected\n", says=("data.txt", "unknown file type '.txt'")),
    Case("excel-file", "data.xlsx", b"PK\x03\x04" + b"\x00" * 32, says=("data.xlsx", "unknown file type '.xlsx'")),
    # --- size
    Case("over-the-file-size-cap", "data.jsonl", jsonl(*good_rows(1)) + " " * (1024 * 1024 + 10),
         env={"STUDIO_MAX_DATA_MB": "1"}, says=("data.jsonl is 1.0 MB", "limit of 1 MB", "STUDIO_MAX_DATA_MB")),
    Case("only-row-oversized", "data.jsonl", jsonl({**GOOD, "chosen": OVERSIZED}),
         says=("No usable preference pairs", "row 1: chosen holds 1,000,001 characters")),
    # --- CSV structure
    Case("csv-duplicate-columns", "data.csv", csv_text("prompt,chosen,rejected,chosen", "Q,a,b,c"),
         says=("data.csv", "column 'chosen' appears 2 times", "columns 2 and 4")),
    Case("csv-case-duplicate-columns", "data.csv", csv_text("prompt,chosen,Chosen,rejected", "Q,a,c,b"),
         says=("data.csv", "'chosen' and 'Chosen'", "--chosen-col")),
    Case("csv-all-rows-ragged", "data.csv", csv_text("prompt,chosen,rejected", "Q,a", "R,b"),
         says=("No usable preference pairs", "row 1: has 2 cells, the header has 3")),
    Case("csv-one-column", "data.csv", csv_text("text", "hello"), says=("Could not tell which columns", "text")),
    Case("parquet-truncated", "", make=parquet(good_rows(30), cut=100), says=("Cannot read data.parquet as Parquet",)),
    Case("parquet-that-is-csv", "data.parquet", csv_text("prompt,chosen,rejected", "Q,a,b"),
         says=("Cannot read data.parquet as Parquet",)),
    # --- rows that are all unusable, layouts that are unknown
    Case("jsonl-all-malformed", "data.jsonl", "{oops\n{again\n", says=("2 rows read, all dropped", "row 1: not valid JSON")),
    Case("jsonl-all-identical", "data.jsonl", jsonl({**GOOD, "rejected": GOOD["chosen"]}),
         says=("row 1: chosen is identical to rejected",)),
    Case("unknown-layout", "data.jsonl", jsonl({"foo": "a", "bar": "b"}), says=("Could not tell which columns", "foo, bar")),
    Case("mapped-column-missing", "data.jsonl", jsonl(GOOD), args=("--chosen-col", "nope"),
         says=("Column 'nope' (mapped as chosen) is not in data.jsonl",)),
    Case("nan-only-parquet", "", make=parquet([{"prompt": "Q", "chosen": float("nan"), "rejected": "b"}]),
         says=("row 1: chosen is missing",)),
    Case("path-with-nul-byte", "bad\x00name.jsonl", None, says=("bad", "name.jsonl")),

    # --- exit 0: the good rows are kept, each bad one is reported by its number
    Case("jsonl-mixed-good-and-bad", "data.jsonl",
         jsonl(GOOD, '{"prompt": "Q", "chosen": "a", "rej', GOOD, "[1, 2]", "null", GOOD), code=0,
         says=("usable pairs: 3", "row 2: not valid JSON", "row 4: not a JSON object (got list)",
               "row 5: not a JSON object (got null)")),
    Case("jsonl-huge-integer-line", "data.jsonl", jsonl(GOOD, f'{{"prompt": {HUGE_DIGITS}}}', GOOD), code=0,
         says=("usable pairs: 2", "row 2: not valid JSON", "4300 digits")),
    Case("jsonl-deep-nesting-line", "data.jsonl", jsonl(GOOD, deep_json(100_000), GOOD), code=0,
         says=("usable pairs: 2", "row 2: nested too deeply")),
    Case("jsonl-latin1-line", "data.jsonl", jsonl(GOOD, GOOD).encode() + b'{"prompt": "caf\xe9"}\n', code=0,
         says=("usable pairs: 2", "row 3: not UTF-8 text (byte 0xe9")),
    Case("jsonl-duplicate-key", "data.jsonl", jsonl(GOOD, '{"prompt": "Q", "chosen": "a", "chosen": "b", "rejected": "c"}'),
         code=0, says=("usable pairs: 1", "row 2: key 'chosen' appears twice")),
    Case("jsonl-oversized-field", "data.jsonl", jsonl(GOOD, {**GOOD, "rejected": OVERSIZED}, GOOD), code=0,
         says=("usable pairs: 2", "row 2: rejected holds 1,000,001 characters, over the limit of 1,000,000")),
    Case("jsonl-non-string-cells", "data.jsonl", jsonl(GOOD, {**GOOD, "chosen": 7}, {**GOOD, "prompt": ["x"]}), code=0,
         says=("usable pairs: 1", "row 2: chosen is not text (got int)", "row 3: prompt")),
    Case("json-nan-literal", "data.json", '[{"prompt": "Q", "chosen": NaN, "rejected": "b"}, '
         + json.dumps(GOOD) + "]", code=0, says=("usable pairs: 1", "row 1: chosen is missing (NaN)")),
    Case("csv-big-field-kept-oversized-dropped", "data.csv",
         csv_text("prompt,chosen,rejected", "Q,a,b", f"R,{BIG_FIELD},c", f"S,{OVERSIZED},d"), code=0,
         says=("usable pairs: 2", "row 3: chosen holds 1,000,001 characters")),
    Case("csv-ragged-rows", "data.csv", csv_text("prompt,chosen,rejected", "Q,a,b", "R,a,b,extra", "S,a", "T,a,b"),
         code=0, says=("usable pairs: 2", "row 2: has 4 cells, the header has 3", "row 3: has 2 cells, the header has 3")),
    Case("csv-trailing-empty-columns", "data.csv", csv_text("prompt,chosen,rejected,,", "Q,a,b,,"), code=0,
         says=("usable pairs: 1",)),
    Case("csv-header-trailing-commas-rows-without", "data.csv", csv_text("prompt,chosen,rejected,,", "Q,a,b", "R,c,d,,"),
         code=0, says=("usable pairs: 2", "dropped: 0")),
    Case("csv-empty-cells", "data.csv", csv_text("prompt,chosen,rejected", "Q,a,b", "R,,b"), code=0,
         says=("usable pairs: 1", "row 2: chosen is empty")),
    Case("csv-semicolons", "data.csv", csv_text("prompt;chosen;rejected", "Q;a;b"), code=0,
         says=("usable pairs: 1", "separated by ';'")),
    Case("utf16-with-bom", "data.csv", b"\xff\xfe" + csv_text("prompt,chosen,rejected", "Q,a,b").encode("utf-16-le"),
         code=0, says=("usable pairs: 1", "UTF-16")),
    Case("parquet-none-and-nan", "", make=parquet([GOOD, {"prompt": "Q", "chosen": None, "rejected": "b"}]), code=0,
         says=("usable pairs: 1", "row 2: chosen is missing")),
    Case("ambiguous-prompt-and-question", "data.jsonl", jsonl({**GOOD, "question": "Other?"}), code=0,
         says=("usable pairs: 1", "prompt=prompt", "'question' also looks like a prompt column")),
    Case("chosen-rejected-beside-response-a-b", "data.jsonl",
         jsonl({**GOOD, "response_a": "x", "response_b": "y"}), code=0,
         says=("chosen=chosen", "rejected=rejected", "not used: response_a, response_b")),
    Case("messages-with-unknown-role", "data.jsonl",
         jsonl({"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "a"}],
                "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "b"}]},
               {"chosen": [{"role": "user", "content": "Q"}, {"role": "tool", "content": "a"}],
                      "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "b"}]}),
         code=0, says=("usable pairs: 1", "row 2: chosen: message 2 has unknown role 'tool'")),
]


@pytest.mark.parametrize("case", FILE_CASES, ids=[c.id for c in FILE_CASES])
def test_data_check_on_a_bad_file(case: Case, tmp_path, monkeypatch, capsys):
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    path = case.build(tmp_path)
    code = cli.main(["data", "check", str(path), "--no-tokens", *case.args])
    out, err = capsys.readouterr()
    assert code == case.code, (out, err)
    assert "Traceback" not in err
    if case.code == 2:
        assert out == "" and err.startswith("error: ") and err.count("\n") == 1, err
        text = err
    else:
        assert err == ""
        text = out
    for fragment in case.says:
        assert fragment in text, f"{fragment!r} not in {text!r}"


def test_the_corpus_is_at_least_forty_files():
    assert len(FILE_CASES) >= 40
    assert sum(c.code == 0 for c in FILE_CASES) >= 10  # files whose good rows survive their bad ones


# --- settings: refused before any run folder exists -------------------------------------------------

SETTING_CASES = [
    ("beta=inf", "beta"),
    ("beta=nan", "beta"),
    ("beta=abc", "beta"),
    ("weight_decay=nan", "weight_decay"),
    ("learning_rate=inf", "learning_rate"),
    ("learning_rate=-1", "learning_rate"),
    ("seed=-1", "seed"),
    ("seed=4294967296", "seed"),
    ("num_train_epochs=inf", "num_train_epochs"),
    ("lora_r=100000", "lora_r"),
    ("lora_dropout=1.5", "lora_dropout"),
    ("max_length=0", "max_length"),
    ("max_length=1000000000", "max_length"),
    ("optim=nonsense", "optim"),
    ("loss_type=bogus", "loss_type"),
    ("eval_fraction=1.0", "eval_fraction"),
    ("per_device_train_batch_size=0", "per_device_train_batch_size"),
    ("nosuchkey=1", "nosuchkey"),
    ("beta", "KEY=VALUE"),
]


@pytest.fixture(scope="module")
def small_pairs(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text(jsonl(*good_rows(4)), encoding="utf-8")
    return path


@pytest.mark.parametrize("setting, key", SETTING_CASES, ids=[s for s, _ in SETTING_CASES])
def test_train_refuses_a_bad_setting_before_any_run_folder(setting, key, small_pairs, studio_home, tmp_path,
                                                          monkeypatch, capsys):
    from studio.training import TrainingJob

    def must_not_start(self):
        raise AssertionError(f"--set {setting} was accepted: a run would start (and make {self.run.path})")

    # Not a stand-in for training: a setting that gets through is the failure this test looks for,
    # and it must fail fast instead of training (lora_r=100000 would try to allocate ~100 GB).
    monkeypatch.setattr(TrainingJob, "start", must_not_start)
    out_dir = tmp_path / "run"
    code = cli.main(["train", "--preset", "cpu-quickstart", "--data", str(small_pairs), "--max-steps", "1",
                     "--set", setting, "--out", str(out_dir), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert key in err and "Traceback" not in err
    assert not out_dir.exists() and not any((studio_home / "runs").glob("*"))


# --- the web app still serves after bad uploads ------------------------------------------------------

WEB_CASES = ["binary-garbage", "json-deep-nesting", "json-huge-integer", "latin1-csv", "csv-duplicate-columns",
             "header-only-csv", "jsonl-mixed-good-and-bad", "csv-big-field-kept-oversized-dropped"]


def test_the_app_answers_every_bad_upload_and_still_takes_a_good_one(launched_app, tmp_path):
    from gradio_client import Client, handle_file

    url, home = launched_app
    client = Client(url, verbose=False)
    by_id = {c.id: c for c in FILE_CASES}
    for case_id in WEB_CASES:
        case = by_id[case_id]
        folder = tmp_path / case_id
        folder.mkdir()
        path = case.build(folder)
        summary = client.predict(handle_file(str(path)), api_name="/check_upload")[0]
        if case.code == 2:
            assert "Cannot use" in summary and case.says[-1] in summary, (case_id, summary)
        else:
            assert "usable pairs" in summary, (case_id, summary)
    uploads = sorted(p.name for p in (home / "uploads").iterdir())
    kept = [c for c in WEB_CASES if by_id[c].code == 0]
    assert len(uploads) == len(kept), uploads  # refused uploads are deleted at once

    good = tmp_path / "good.jsonl"
    good.write_text(jsonl(*good_rows(3)), encoding="utf-8")
    summary = client.predict(handle_file(str(good)), api_name="/check_upload")[0]
    assert "| 3 | 3 | 0 |" in summary


def test_the_app_reads_server_paths_only_inside_its_folders(launched_app, tmp_path):
    from gradio_client import Client

    from studio.files import preset_data_dir

    url, home = launched_app
    client = Client(url, verbose=False)

    def check_path(data: str) -> str:
        return client.predict(data=data, model="embedded", max_length=512, prompt_col="", chosen_col="",
                              rejected_col="", system_col="", api_name="/check_train_data")[0]

    secret = tmp_path / "secret.jsonl"
    secret.write_text(jsonl(*good_rows(2)), encoding="utf-8")
    link = home / "uploads" / "innocent.jsonl"
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(secret)
    for path in (str(secret), "/etc/passwd", "../../../../etc/passwd.jsonl", str(link)):
        summary = check_path(path)
        assert "Cannot use" in summary and "outside the folders the web app reads data from" in summary, summary
        assert "fruit number" not in summary
    assert "| 170 | 170 | 0 |" in check_path(str(preset_data_dir() / "twin-style.jsonl"))
    summary = client.predict(dataset_id="../../etc/passwd.jsonl", model="embedded", max_length=512,
                             api_name="/check_hub")[0]
    assert "is not a hub dataset id" in summary


def test_an_upload_over_the_limit_is_refused_where_it_was_made_and_not_kept(launched_app, tmp_path, monkeypatch):
    from gradio_client import Client, handle_file

    url, home = launched_app
    monkeypatch.setenv("STUDIO_MAX_UPLOAD_MB", "0.01")
    before = set((home / "uploads").iterdir()) if (home / "uploads").exists() else set()
    big = tmp_path / "big.jsonl"
    big.write_text(jsonl(*good_rows(200)), encoding="utf-8")
    summary = Client(url, verbose=False).predict(handle_file(str(big)), api_name="/check_upload")[0]
    assert "Cannot use big.jsonl" in summary and "over the upload limit of 0.01 MB" in summary
    assert set((home / "uploads").iterdir()) == before
