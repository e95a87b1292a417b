"""The data doctor without a model: each defect planted in a file, found with its rows; a clean file finds nothing;
the split keeps a prompt's copies on one side; a cleaned copy round-trips; `data check` prints the findings."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from studio.config import RunConfig
from studio.data import load_preferences
from studio.data.clean import write_cleaned
from studio.data.findings import (KINDS, SMALL_EVAL, accuracy_text, counts, find_all, normal, rows_to_drop, wilson)
from studio.training_data import data_findings

ROOT = Path(__file__).resolve().parent.parent

SUBJECTS = ["tea", "bread", "git", "python", "running", "sleep", "rain", "maps", "music", "paint", "bikes", "soup",
            "chess", "kites", "clay", "owls", "jazz", "tides", "moss", "rice", "glass", "salt", "wool", "ink",
            "bees", "snow", "dust", "lamps", "ferns", "boats"]


def pair(subject: str, chosen_words: int = 3, rejected_words: int = 6, **extra) -> dict:
    return {"prompt": f"Say something about {subject}.",
            "chosen": " ".join([f"{subject}"] + ["good"] * (chosen_words - 1)) + ".",
            "rejected": " ".join([f"{subject}"] + ["bad"] * (rejected_words - 1)) + ".", **extra}


def balanced(subjects) -> list[dict]:
    """Pairs with no length preference: chosen longer in half, shorter in the other half."""
    return [pair(s, 3, 6) if i % 2 else pair(s, 6, 3) for i, s in enumerate(subjects)]


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def by_kind(findings, kind):
    return [f for f in findings if f["kind"] == kind]


def rows_of(findings, kind):
    return sorted({r for f in by_kind(findings, kind) for r in f["rows"]})


@pytest.fixture
def held_out_file(tmp_path):
    """A clean held-out file of SMALL_EVAL pairs whose prompts no training file here uses."""
    return write(tmp_path / "held.jsonl", balanced([f"held topic {i}" for i in range(SMALL_EVAL)]))


def findings_of(path, held_out=None, **settings):
    cfg = RunConfig(data=str(path), eval_data=str(held_out) if held_out else None, **settings)
    return data_findings(cfg, load_preferences(path))


def test_a_clean_file_has_no_findings(tmp_path, held_out_file):
    path = write(tmp_path / "clean.jsonl", balanced(SUBJECTS))
    assert findings_of(path, held_out_file) == []


def test_duplicates_near_duplicates_and_conflicts_name_their_rows(tmp_path, held_out_file):
    rows = balanced(SUBJECTS[:10])
    rows.append(dict(rows[2]))  # row 11: row 3 again
    rows.append({"prompt": "  SAY something about  tea ", "chosen": rows[0]["chosen"].upper() + "!",
                 "rejected": "\t" + rows[0]["rejected"]})  # row 12: row 1 with other whitespace, case, punctuation
    rows.append({"prompt": rows[4]["prompt"], "chosen": rows[4]["rejected"], "rejected": rows[4]["chosen"]})  # row 13
    findings = findings_of(write(tmp_path / "d.jsonl", rows), held_out_file)
    assert [f["rows"] for f in by_kind(findings, "duplicate")] == [[3, 11]]
    assert [f["rows"] for f in by_kind(findings, "near_duplicate")] == [[1, 12]]
    assert [f["rows"] for f in by_kind(findings, "conflict")] == [[5, 13]]
    assert "Row 11 repeats row 3" in by_kind(findings, "duplicate")[0]["message"]
    assert "other way round" in by_kind(findings, "conflict")[0]["message"]
    assert set(counts(findings)) == {"duplicate", "near_duplicate", "conflict"}


def test_normal_ignores_whitespace_case_and_edge_punctuation():
    assert normal("  Hello,\n  WORLD!! ") == normal("hello, world") == "hello, world"
    assert normal("a b") != normal("ab")


def test_eval_overlap_names_the_training_rows(tmp_path):
    train = balanced(SUBJECTS[:12])
    held = balanced([f"other {i}" for i in range(18)]) + [pair("Rain"), pair("bikes ")]  # rows 7 and 11 of train
    findings = findings_of(write(tmp_path / "t.jsonl", train), write(tmp_path / "h.jsonl", held))
    assert rows_of(findings, "eval_overlap") == [7, 11]
    assert all("held-out row" in f["message"] and "h.jsonl" in f["message"] for f in by_kind(findings, "eval_overlap"))
    assert counts(findings) == {"eval_overlap": 2}


def test_the_split_never_holds_out_a_copy_of_a_training_prompt(tmp_path):
    rows = balanced(SUBJECTS)
    rows += [dict(r) for r in rows[:10]] + [{**r, "prompt": r["prompt"].upper()} for r in rows[10:20]]
    data = load_preferences(write(tmp_path / "dups.jsonl", rows))
    for seed in range(8):
        train, held = data.split(0.2, seed)
        train_prompts = {normal(p["prompt"][0]["content"]) for p in train.pairs}
        assert not {normal(p["prompt"][0]["content"]) for p in held.pairs} & train_prompts
        assert len(train) + len(held) == len(data) and 0 < len(held) <= 13
        assert sorted(train.rows + held.rows) == list(range(1, len(rows) + 1))
    # The split the run makes is the one `data check` looks at: no overlap, whatever the duplicates.
    assert not by_kind(findings_of(data.report.source, eval_fraction=0.2, seed=3), "eval_overlap")


def test_length_bias_says_the_share_and_the_mean_gap(tmp_path, held_out_file):
    rows = [pair(s, 3, 9) for s in SUBJECTS[:9]] + [pair(SUBJECTS[9], 9, 3)]
    findings = findings_of(write(tmp_path / "short.jsonl", rows), held_out_file)
    (bias,) = by_kind(findings, "length_bias")
    assert bias["rows"] == list(range(1, 10))
    assert "In 9 of 10 pairs (90%) the chosen answer is shorter" in bias["message"]
    assert "by 4.8 words on average" in bias["message"]  # (9 * -6 + 6) / 10
    assert "answer briefly" in bias["message"] and "ld_alpha" in bias["message"]
    longer = findings_of(write(tmp_path / "long.jsonl", [pair(s, 9, 3) for s in SUBJECTS[:10]]), held_out_file)
    assert "chosen answer is longer" in by_kind(longer, "length_bias")[0]["message"]


def test_small_eval_from_the_split_names_the_held_out_rows(tmp_path):
    path = write(tmp_path / "twelve.jsonl", balanced(SUBJECTS[:12]))
    findings = findings_of(path)  # a 5% split of 12 pairs: 1 held out
    (small,) = by_kind(findings, "small_eval")
    data = load_preferences(path)
    _, held = data.split(0.05, 0)
    assert small["rows"] == held.rows and len(held.rows) == 1
    assert "Only 1 held-out pair (held out: 5% of the training data (seed 0))" in small["message"]
    assert "0.21–1.00" in small["message"]  # even 1/1 is compatible with 21%
    none = by_kind(findings_of(path, eval_fraction=0.0), "small_eval")
    assert none[0]["rows"] == [] and "No pairs are held out" in none[0]["message"]


def test_wilson_interval_and_the_accuracy_text():
    low, high = wilson(0, 1)
    assert low == 0.0 and high == pytest.approx(0.7935, abs=1e-3)
    low, high = wilson(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    assert accuracy_text(0.0, 1) == "0.00 (95% 0.00–0.79, 1 pairs)"
    assert accuracy_text(0.9, 40) == "0.90"


def test_truncated_counts_the_tokens_each_side_loses(tmp_path, studio_home, held_out_file):
    from studio.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model("embedded"))
    long_text = " ".join(f"word{i}" for i in range(200))
    rows = balanced(SUBJECTS[:6])
    rows.insert(2, {"prompt": "Write at length.", "chosen": "A. " + long_text, "rejected": "B. " + long_text + " end"})
    rows.insert(4, {"prompt": "Write the same.", "chosen": long_text + " yes", "rejected": long_text + " no"})
    path = write(tmp_path / "long.jsonl", rows)
    data = load_preferences(path, tokenizer=tokenizer, max_length=128)
    cfg = RunConfig(data=str(path), eval_data=str(held_out_file), max_length=128)
    findings = data_findings(cfg, data, tokenizer=tokenizer)
    assert rows_of(findings, "truncated") == [3, 5]
    cut, same = by_kind(findings, "truncated")
    assert "over max_length 128: chosen loses" in cut["message"] and "identical" not in cut["message"]
    assert "identical" in same["message"] and "teaches nothing" in same["message"]
    lost = [int(w) for w in cut["message"].split("loses ")[1].split(" tokens and rejected ")[0:1]]
    assert lost[0] > 100  # 200 words cut to what fits after the prompt
    # No tokenizer, no truncation finding; a larger max_length, none either.
    assert not by_kind(data_findings(cfg, data), "truncated")
    assert not by_kind(data_findings(cfg.replace(max_length=4096), data, tokenizer=tokenizer), "truncated")


def test_the_cleaned_copy_round_trip(tmp_path, held_out_file):
    rows = balanced(SUBJECTS[:10])
    rows.append(dict(rows[2]))                                           # 11: duplicate of 3
    rows.append({**rows[0], "prompt": rows[0]["prompt"].upper()})        # 12: near duplicate of 1
    rows.append({**rows[4], "chosen": rows[4]["rejected"], "rejected": rows[4]["chosen"]})  # 13: conflicts with 5
    rows.append({"system": "Be brief.", **pair("held topic 3")})          # 14: its prompt differs (a system message)
    rows.append(pair("held topic 4"))                                     # 15: also a held-out prompt
    source = write(tmp_path / "dirty.jsonl", rows)
    before = source.read_bytes()
    findings = findings_of(source, held_out_file)
    assert counts(findings) == {"duplicate": 1, "near_duplicate": 1, "conflict": 1, "eval_overlap": 1}
    drop = rows_to_drop(findings, ("duplicate", "near_duplicate", "conflict", "eval_overlap"))
    assert drop == {11, 12, 5, 13, 15}
    target = tmp_path / "dirty.cleaned.jsonl"
    assert write_cleaned(load_preferences(source), drop, target) == 10
    assert source.read_bytes() == before  # the original is never changed
    assert findings_of(target, held_out_file) == []
    cleaned = load_preferences(target)
    assert cleaned.pairs[-1]["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert {p["prompt"][-1]["content"] for p in cleaned.pairs} == {p["prompt"] for i, p in enumerate(rows, 1)
                                                                   if i not in drop}
    # Only the ticked kinds go.
    assert rows_to_drop(findings, ("duplicate",)) == {11}


def test_findings_kinds_are_the_documented_ones(tmp_path, held_out_file):
    rows = [pair(s, 3, 9) for s in SUBJECTS[:10]] + [pair("tea", 3, 9)]
    findings = find_all(load_preferences(write(tmp_path / "k.jsonl", rows)))
    assert {f["kind"] for f in findings} <= set(KINDS)
    assert all(set(f) == {"kind", "rows", "message"} for f in findings)


def studio(home: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "STUDIO_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "studio", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.subprocess
def test_data_check_prints_the_findings(tmp_path, studio_home, held_out_file):
    rows = [pair(s, 3, 9) for s in SUBJECTS[:12]]
    rows.append(dict(rows[3]))  # row 13
    rows.append(pair("held topic 7", 3, 9))  # row 14: a held-out prompt
    path = write(tmp_path / "check.jsonl", rows)
    done = studio(studio_home, "data", "check", path, "--eval-data", held_out_file, "--json", "--no-tokens")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["rows"], report["pairs"], report["dropped"]) == (14, 14, [])  # the existing object is all there
    assert counts(report["findings"]) == {"duplicate": 1, "eval_overlap": 1, "length_bias": 1}
    assert rows_of(report["findings"], "eval_overlap") == [14]
    text = studio(studio_home, "data", "check", path, "--no-tokens")
    assert text.returncode == 0, text.stderr
    assert "findings: 3" in text.stdout and "duplicate (1):" in text.stdout and "Row 13 repeats row 4" in text.stdout
    assert "small_eval (1):" in text.stdout  # without --eval-data: the run's own 5% split of 14 pairs
