"""`python -m studio …` as a user runs it: JSON outputs, exit codes, messages on stderr.

`train` and one `eval` run in a process of their own, as a user starts them; the other commands run the same argv
through `main()` in this process (`studio_here`): the same exit code, stdout and stderr, without the ~7 s of CPU
that each interpreter start-up with torch, transformers and PEFT costs.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import link_shared
from studio.cli import main

ROOT = Path(__file__).resolve().parent.parent
TWIN = ROOT / "presets" / "data" / "twin-style.jsonl"


@pytest.fixture(scope="module")
def cli_home(tmp_path_factory, model_cache, shared_refcache) -> Path:
    return link_shared(tmp_path_factory.mktemp("clihome"), model_cache, shared_refcache)


def studio(home: Path, *args, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "STUDIO_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "studio", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def studio_here(cli_home, monkeypatch, capsys):
    """`studio_here(*args)`: the command through `main()` in this process, as a CompletedProcess like `studio`'s."""
    monkeypatch.setenv("STUDIO_HOME", str(cli_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def run(*args) -> subprocess.CompletedProcess:
        argv = [str(a) for a in args]
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's refusals
            code = e.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(argv, code, out, err)

    return run


@pytest.fixture(scope="module")
def trained_run(cli_home, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("runs") / "quick"
    # A 5% split of the training file (8 pairs) as the held-out set keeps the evaluations short.
    done = studio(cli_home, "train", "--preset", "cpu-quickstart", "--max-steps", 2, "--set", "max_length=64",
                  "--set", "eval_steps=0", "--set", "eval_data=none", "--set", "eval_fraction=0.05", "--out", out, "--quiet")
    return out, done


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "probes.txt"
    path.write_text("# two probes\nWrite a paragraph to introduce supervised fine-tuning.\n\nWhat is 19 times 4?\n")
    return path


# --- existing commands -------------------------------------------------------------------------


@pytest.mark.subprocess
def test_presets_lists_every_preset(cli_home, studio_here):
    done = studio(cli_home, "presets", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    names = {r["name"] for r in rows}
    assert {"cpu-quickstart", "llm-twin-dpo", "twin-style-cpu", "concise-helpful-cpu"} <= names
    assert all(r["card"].get("title") for r in rows)
    plain = studio_here("presets")
    assert plain.returncode == 0 and "twin-style-cpu" in plain.stdout


def test_data_check_reports_the_file_as_json(studio_here):
    done = studio_here("data", "check", TWIN, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {"format", "rows", "pairs", "dropped"} <= set(report)
    assert (report["format"], report["rows"], report["pairs"], report["dropped"]) == ("jsonl", 170, 170, [])
    assert report["tokens"]["prompt"]["max"] > 0


@pytest.mark.parametrize("content, words", [
    ('{"prompt": "hi", "chosen": "", "rejected": "no"}\n', "No usable preference pairs"),
    ('{"foo": "a", "bar": "b"}\n', "Could not tell which columns"),
    (None, "file not found"),
])
def test_data_check_bad_input_exits_2_with_the_reason_on_stderr(studio_here, tmp_path, content, words):
    path = tmp_path / "pairs.jsonl"
    if content is not None:
        path.write_text(content)
    done = studio_here("data", "check", path, "--json", "--no-tokens")
    assert done.returncode == 2
    assert words in done.stderr and done.stdout == "" and "Traceback" not in done.stderr


@pytest.mark.subprocess
@pytest.mark.slow
def test_train_leaves_a_complete_run_folder(trained_run):
    out, done = trained_run
    assert done.returncode == 0, done.stderr
    assert f"run folder: {out}" in done.stderr and "done: 2 steps" in done.stdout
    for name in ("config.yaml", "metrics.jsonl", "status.json", "data.json", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors"):
        assert (out / name).is_file(), name
    assert json.loads((out / "status.json").read_text())["state"] == "done"


def test_train_with_a_bad_override_exits_2(studio_here):
    done = studio_here("train", "--set", "beta=-1", "--max-steps", 1)
    assert done.returncode == 2 and "beta must be > 0" in done.stderr


# --- eval / chat / compare ---------------------------------------------------------------------


@pytest.mark.subprocess
@pytest.mark.slow
def test_eval_prints_the_accuracies_as_json_and_saves_them(trained_run, cli_home, prompts_file):
    out, _ = trained_run
    done = studio(cli_home, "eval", out, "--json", "--prompts", prompts_file, "--max-new-tokens", 8)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for key in ("pairs", "baseline_accuracy", "tuned_accuracy", "reward_accuracy", "mean_margin", "kl_drift"):
        assert key in result, key
    assert result["pairs"] == 8 == json.loads((out / "data.json").read_text())["eval_pairs"]  # the run's own held-out split
    assert result["data"]["source"].endswith("twin-style.jsonl") and "held out" in result["data"]["split"]
    assert 0 <= result["tuned_accuracy"] <= 1 and 0 <= result["baseline_accuracy"] <= 1
    assert json.loads((out / "eval.json").read_text())["tuned_accuracy"] == result["tuned_accuracy"]


@pytest.mark.slow
def test_eval_with_data_scores_every_pair_of_that_file(trained_run, studio_here, tmp_path, prompts_file):
    out, _ = trained_run
    rows = [json.loads(line) for line in TWIN.read_text().splitlines()[:5]]
    path = tmp_path / "pairs.csv"  # another layout than the run's data: CSV with instruction/chosen/rejected
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["instruction", "chosen", "rejected"])
        w.writerows([r["prompt"], r["chosen"], r["rejected"]] for r in rows)
    done = studio_here("eval", out, "--data", path, "--prompts", prompts_file, "--max-new-tokens", 4)
    assert done.returncode == 0, done.stderr
    assert "pairs: 5" in done.stdout and "baseline_accuracy:" in done.stdout and "tuned_accuracy:" in done.stdout
    assert "reward_accuracy:" in done.stdout


@pytest.mark.slow
def test_chat_prints_baseline_and_tuned_answers(trained_run, studio_here):
    out, _ = trained_run
    done = studio_here("chat", out, "--prompt", "Say hello.", "--max-new-tokens", 6, "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["baseline"].strip() and answer["tuned"].strip() and answer["prompt"] == "Say hello."


@pytest.mark.slow
def test_compare_prints_the_grid_and_writes_csv_and_markdown(trained_run, studio_here, tmp_path, prompts_file):
    out, _ = trained_run
    csv_path, md_path = tmp_path / "grid.csv", tmp_path / "grid.md"
    done = studio_here("compare", out, "--prompts", prompts_file, "--max-new-tokens", 8, "--json",
                  "--csv", csv_path, "--markdown", md_path)
    assert done.returncode == 0, done.stderr
    grid = json.loads(done.stdout)
    assert grid["prompts"] == ["Write a paragraph to introduce supervised fine-tuning.", "What is 19 times 4?"]
    assert [c["name"] for c in grid["columns"]] == ["SFT baseline", "quick"]
    # The style measures, and since issue 14 the damage measures under every column too.
    assert all(len(c["answers"]) == 2 and set(c["measures"]) >= {"words", "readability", "first_person", "repetition",
                                                                 "distinct_2", "ended_on_own"}
               for c in grid["columns"])
    assert list(csv.reader(csv_path.open()))[0] == ["prompt", "SFT baseline", "quick"]
    assert md_path.read_text().startswith("| prompt | SFT baseline | quick |")


@pytest.mark.parametrize("command", [["eval", "no-such-run"], ["chat", "no-such-run", "--prompt", "hi"],
                                     ["compare", "no-such-run"]])
def test_an_unknown_run_exits_2(studio_here, command):
    done = studio_here(*command)
    assert done.returncode == 2 and "No run 'no-such-run'" in done.stderr


# --- sweep -------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid, words", [
    (["--grid", "beta=0.1,0.2", "--grid", "learning_rate=1e-5,2e-5", "--grid", "lora_r=4,8"], "at most 2 settings"),
    (["--grid", "beta=0.1,0.2,0.3,0.4", "--grid", "learning_rate=1,2,3,4"], "makes 16 runs"),
    ([], "--grid"),
])
def test_sweep_refuses_bad_grids_with_exit_2(studio_here, grid, words):
    done = studio_here("sweep", "--preset", "cpu-quickstart", *grid)
    assert done.returncode == 2 and words in done.stderr


@pytest.mark.slow
def test_sweep_runs_the_grid_and_prints_the_comparison(cli_home, studio_here, prompts_file):
    done = studio_here("sweep", "--preset", "cpu-quickstart", "--grid", "beta=0.3", "--max-steps", 1,
                  "--set", "max_length=48", "--set", "eval_steps=0", "--set", "lora_target_modules=q_proj,v_proj",
                  "--set", "eval_data=none", "--set", "eval_fraction=0.05",
                  "--prompts", prompts_file, "--max-new-tokens", 4, "--json", "--quiet")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["state"] == "done" and [r["beta"] for r in result["runs"]] == [0.3]
    assert all(r["state"] == "done" and r["tuned_accuracy"] is not None for r in result["runs"])
    assert [c["name"] for c in result["grid"]["columns"]] == ["SFT baseline"] + [r["run"] for r in result["runs"]]
    assert (cli_home / "sweeps" / result["sweep"] / "sweep.json").is_file()
