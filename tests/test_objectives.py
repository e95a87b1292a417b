"""DPO, KTO, ORPO and SimPO train for real a few steps on the embedded model, through the CLI and the app's API,
each with its own metrics in metrics.jsonl and its own charts; the reference log-probs are computed once and
reused, and every change that alters them misses the cache."""

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from studio import cli, refcache
from studio.config import RunConfig
from studio.training import TrainingJob

# These tests read the cache's hits and misses, so each home starts with an empty one.
pytestmark = pytest.mark.fresh_refcache
ROOT = Path(__file__).resolve().parent.parent
# What each objective logs of its own (beside loss), and a chart title that names it in words.
OWN = {"dpo": ["rewards/margins", "rewards/accuracies"], "kto": ["kl", "rewards/chosen", "rewards/rejected"],
       "orpo": ["log_odds_ratio", "nll_loss", "rewards/margins"], "simpo": ["rewards/margins", "rewards/accuracies"]}
TITLES = {"kto": "KL estimate", "orpo": "Log odds ratio", "simpo": "SimPO reward margin"}


def metrics_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def info_of(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


# KTO (the objective with a reference pass and its cache) goes through a real `python -m studio` process; ORPO and
# SimPO go through the same CLI entry point in this process, which saves each the ~8 s of imports a process pays
# and proves the same things: the command line, the run folder it writes and the metrics each objective logs.
@pytest.mark.slow
@pytest.mark.parametrize("objective", [pytest.param("kto", marks=pytest.mark.subprocess), "orpo", "simpo"])
def test_each_objective_trains_through_the_cli(objective, tmp_path, model_cache, style_pairs, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(model_cache, target_is_directory=True)
    out = tmp_path / "run"
    argv = ["train", "--preset", "cpu-quickstart", "--data", str(style_pairs),
            "--set", f"objective={objective}", "--max-steps", "2", "--set", "max_length=64", "--set", "eval_steps=0",
            "--set", "eval_data=none", "--set", "eval_fraction=0", "--set", "lora_r=4", "--set", "lora_alpha=8",
            "--set", "lora_target_modules=q_proj,v_proj", "--set", "warmup_steps=0", "--out", str(out), "--quiet"]
    if objective == "kto":
        # 12 answers a step: the two steps read all 24 single answers, so the reference pass is precomputed (and
        # cached); a run that stops before reading its data once computes the reference each step instead.
        argv += ["--set", "per_device_train_batch_size=12"]
        env = {**os.environ, "STUDIO_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
        done = subprocess.run([sys.executable, "-m", "studio", *argv], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=900)
        code, stderr = done.returncode, done.stderr
    else:
        monkeypatch.setenv("STUDIO_HOME", str(home))
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        code = cli.main(argv)
        stderr = capsys.readouterr().err
    assert code == 0, stderr[-3000:]
    info = info_of(out)
    assert info["objective"] == objective and json.loads((out / "status.json").read_text())["state"] == "done"
    rows = [r for r in metrics_of(out) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    logged = set().union(*rows)
    assert set(OWN[objective]) <= logged, logged
    if objective == "kto":  # a reference objective: its reference pass went through the cache (a first run: a miss)
        assert [e["hit"] for e in info["_run"]["ref_cache"]] == [False]
        assert any((home / "refcache").iterdir())
    else:  # no reference model, no reference pass
        assert "ref_cache" not in info["_run"] and not (home / "refcache").exists()


@pytest.fixture(scope="module")
def api(launched_app):
    from gradio_client import Client

    url, home = launched_app
    return Client(url, verbose=False), home


QUICK = dict(max_steps=2, max_length=64, lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"],
             eval_data="", eval_fraction=0.0, save_steps=0, learning_rate=1e-3, warmup_steps=0)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["kto", "orpo", "simpo"])
def test_each_objective_trains_through_the_api_and_charts_its_own_measures(api, objective, style_pairs):
    client, home = api
    status = client.predict(data=str(style_pairs), objective=objective, **QUICK, api_name="/start")[0]
    assert "Traceback" not in status and "not started" not in status.lower(), status
    job = TrainingJob.active()
    assert job is not None and job.config.objective == objective
    assert job.wait(900) == "done", job.error
    rows = [r for r in metrics_of(job.run.path) if "loss" in r]
    assert len(rows) == 2 and set(OWN[objective]) <= set().union(*rows)
    outputs = client.predict(api_name="/poll")
    charts = dict(zip(["loss", "margins", "accuracy", "rewards", "logps", "objective"], outputs[1:7]))
    titles = {name: json.loads(fig["plot"])["layout"]["title"]["text"] for name, fig in charts.items() if fig}
    assert titles["objective"].startswith(TITLES[objective]), titles
    assert titles["loss"].startswith({"kto": "KTO", "orpo": "ORPO", "simpo": "SimPO"}[objective])
    plotted = json.loads(charts["objective"]["plot"])["data"]
    assert plotted and len(plotted[0]["x"]) == 2  # both steps of the objective's own measure are drawn


# --- the reference cache -----------------------------------------------------------------------------


def quick(data, **changes) -> RunConfig:
    # One step of all 12 pairs: a run that stops before reading its data once computes no reference pass to cache.
    base = dict(model="embedded", data=str(data), max_steps=1, per_device_train_batch_size=12, learning_rate=1e-3,
                lora_r=4, lora_alpha=8, max_length=64, eval_fraction=0.0, eval_steps=0, save_steps=0,
                lora_target_modules=["q_proj", "v_proj"])
    return RunConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def two_dpo_runs(module_home, style_pairs):
    """The same data twice, the second run with another learning rate and beta (which do not change the reference)."""
    first = TrainingJob(quick(style_pairs)).start()
    assert first.wait(900) == "done", first.error
    second = TrainingJob(quick(style_pairs, learning_rate=5e-4, beta=0.3)).start()
    assert second.wait(900) == "done", second.error
    return first, second


@pytest.mark.slow
def test_a_second_run_on_the_same_data_reads_the_reference_from_the_cache(two_dpo_runs):
    first, second = two_dpo_runs
    [miss] = info_of(first.run.path)["_run"]["ref_cache"]
    [hit] = info_of(second.run.path)["_run"]["ref_cache"]
    assert miss["hit"] is False and hit["hit"] is True and hit["key"] == miss["key"]
    # The pass that runs is a phase of its own in the page; a read from the cache is not.
    assert any(p.startswith("computing the reference model's log-probabilities for the") for p in first.phases)
    assert not any("reference" in p for p in second.phases), second.phases
    # The cached numbers are the computed ones: before its first update each run scores the same log-ratios.
    a, b = (next(r for r in metrics_of(job.run.path) if "loss" in r) for job in (first, second))
    assert a["logps/chosen"] == pytest.approx(b["logps/chosen"], abs=1e-4)
    assert a["rewards/margins"] / 0.1 == pytest.approx(b["rewards/margins"] / 0.3, abs=1e-3)
    meta = json.loads((refcache.cache_root() / miss["key"] / "meta.json").read_text())
    assert meta["objective"] == "dpo" and meta["max_length"] == 64 and meta["rows"] == 12


def test_runs_publishing_the_same_entry_at_once_all_go_on_and_leave_one_whole_entry(studio_home):
    # Each rename of a publish can lose to another's (the target appears, or is swapped out, in between); before,
    # the loser's run failed with "Directory not empty". Eight writers released together, twenty times.
    columns = {"ref_chosen_logps": [1.0, 2.0], "ref_rejected_logps": [0.5, 0.25]}
    failures = []
    for trial in range(20):
        start = threading.Barrier(8)

        def write(key=f"key{trial}"):
            start.wait()
            try:
                refcache.store(key, columns, {"rows": 2})
            except OSError as e:
                failures.append(repr(e))

        writers = [threading.Thread(target=write) for _ in range(8)]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
    assert not failures, failures[:3]
    assert refcache.usage()["entries"] == 20
    assert refcache.load("key7", 2, tuple(columns)) == columns
    assert not [p for p in refcache.cache_root().iterdir() if p.name.startswith(".")]  # no staging left behind


@pytest.mark.slow
def test_every_change_that_alters_the_reference_misses(two_dpo_runs, tmp_path):
    from studio.training_data import load_run_data, to_trl

    first, _ = two_dpo_runs
    trainer, cfg = first._trainer, first.config
    dataset = trainer.train_dataset.remove_columns(list(refcache.COLUMNS["dpo"]))
    key, _ = refcache.cache_key(trainer, dataset, cfg)
    assert key == info_of(first.run.path)["_run"]["ref_cache"][0]["key"]

    # Another file: one answer token changed.
    edited = dataset.map(lambda row, i: {"chosen_ids": row["chosen_ids"][:-1] + [7] if i == 0 else row["chosen_ids"]},
                         with_indices=True)
    assert refcache.cache_key(trainer, edited, cfg)[0] != key
    # Another max_length (TRL cuts prompt + answer there, so the sums change).
    trainer.args.max_length = 48
    try:
        assert refcache.cache_key(trainer, dataset, cfg)[0] != key
    finally:
        trainer.args.max_length = 64
    # Another template: the Alpaca prompt tokenizes to other ids.
    alpaca = cfg.replace(prompt_template="alpaca")
    _, train, _ = load_run_data(alpaca, trainer.processing_class)
    tokenized = trainer._prepare_dataset(to_trl(train, alpaca), trainer.processing_class, trainer.args, "train")
    assert refcache.cache_key(trainer, tokenized, alpaca)[0] != key
    # Another model: the same weights in another folder, then that folder's config edited.
    source = Path(trainer.model.config.name_or_path)
    other = tmp_path / "model"
    other.mkdir()
    for f in source.iterdir():
        if f.suffix == ".safetensors":
            (other / f.name).symlink_to(f)
    shutil.copy(source / "config.json", other / "config.json")
    trainer.model.config.name_or_path = str(other)
    try:
        moved = refcache.cache_key(trainer, dataset, cfg)[0]
        assert moved != key
        config = json.loads((other / "config.json").read_text())
        (other / "config.json").write_text(json.dumps({**config, "rope_theta": 1.0}))
        assert refcache.cache_key(trainer, dataset, cfg)[0] not in (key, moved)
    finally:
        trainer.model.config.name_or_path = str(source)
    # The objective: KTO's reference columns are other numbers.
    assert refcache.cache_key(trainer, dataset, cfg.replace(objective="kto"))[0] != key
    # An entry that does not fit the rows asked for is never used.
    assert refcache.load(key, len(dataset) + 1, refcache.COLUMNS["dpo"]) is None
    assert refcache.load(key, len(dataset), refcache.COLUMNS["dpo"]) is not None


@pytest.mark.browser
def test_picking_an_objective_in_the_browser_shows_its_own_settings(launched_app, open_page):
    from playwright.sync_api import expect

    url, _ = launched_app
    page = open_page(1400, 1000)
    page.goto(url)
    page.get_by_role("tab", name="Train").click()
    expect(page.locator("#beta")).to_be_visible()
    expect(page.locator("#simpo-gamma")).to_be_hidden()
    page.locator("#objective input").click()
    page.get_by_role("option", name="simpo", exact=True).click()
    expect(page.locator("#simpo-gamma")).to_be_visible()
    expect(page.locator("#simpo-beta")).to_be_visible()
    expect(page.locator("#beta")).to_be_hidden()
    expect(page.locator("#desirable-weight")).to_be_hidden()
    page.locator("#objective input").click()
    page.get_by_role("option", name="kto", exact=True).click()
    expect(page.locator("#desirable-weight")).to_be_visible()
    expect(page.locator("#beta")).to_be_visible()
    expect(page.locator("#simpo-gamma")).to_be_hidden()


@pytest.mark.slow
def test_the_runs_tab_clears_the_reference_cache(api, style_pairs):
    # Last in the module: the cache tests above have left entries in this home, so it usually trains nothing.
    client, home = api
    if not refcache.usage()["entries"]:  # make an entry: a short DPO run that reads all 12 pairs (a precomputed pass)
        client.predict(data=str(style_pairs), objective="dpo", **{**QUICK, "per_device_train_batch_size": 6},
                       api_name="/start")
        assert TrainingJob.active().wait(900) == "done"
    assert refcache.usage()["entries"] >= 1
    note = client.predict(api_name="/clear_refcache")
    assert "empty" in note and refcache.usage() == {"entries": 0, "bytes": 0}


@pytest.mark.slow
def test_a_run_that_reads_part_of_its_data_scores_its_held_out_reference_once(module_home, style_pairs):
    # 2 steps of 2 pairs read 4 of the 9 training pairs: their reference runs in each step, but the 3 held-out
    # pairs, scored after each step, get theirs once before the first step.
    job = TrainingJob(quick(style_pairs, max_steps=2, per_device_train_batch_size=2, eval_fraction=0.25,
                            eval_steps=1)).start()
    assert job.wait(900) == "done", job.error
    [entry] = info_of(job.run.path)["_run"]["ref_cache"]
    assert entry["split"] == "eval" and entry["hit"] is False
    assert [r["step"] for r in metrics_of(job.run.path) if "eval_loss" in r] == [1, 2]
    trainer = job._trainer
    assert not trainer.args.precompute_ref_log_probs
    assert set(refcache.COLUMNS["dpo"]) <= set(trainer.eval_dataset.column_names)
    # The same numbers as a reference pass inside the evaluation.
    precomputed = trainer.evaluate()
    trainer.eval_dataset = trainer.eval_dataset.remove_columns(list(refcache.COLUMNS["dpo"]))
    in_loop = trainer.evaluate()
    for key in ("eval_loss", "eval_rewards/chosen", "eval_rewards/rejected", "eval_rewards/margins"):
        assert precomputed[key] == pytest.approx(in_loop[key], abs=1e-5), key
    assert precomputed["eval_rewards/margins"] != 0  # the trained adapter moved the margins: the check can fail
