"""A sweep is a queue of ordinary runs over a small grid, evaluated at the end so they can be compared."""

import json

import pytest

from studio.config import ConfigError, RunConfig
from studio.probes import probe_settings
from studio.runs import list_runs
from studio.sweep import MAX_RUNS, Sweep, check_grid, load_sweep, parse_grid


def tiny_config(data, **changes) -> RunConfig:
    base = dict(model="embedded", data=str(data), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3,
                lora_r=4, lora_alpha=8, max_length=48, eval_fraction=0.25, eval_steps=0, save_steps=0,
                lora_target_modules=["q_proj", "v_proj"])
    return RunConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def finished_sweep(module_home, style_pairs):
    sweep = Sweep(tiny_config(style_pairs), {"beta": [0.1, 0.5]}, preset="test",
                  probes=["Tell me one thing about tea."], settings=probe_settings(max_new_tokens=6)).start()
    states_seen = set()
    while sweep.is_alive():
        states_seen.add(sweep.state)
        sweep.wait(0.05)
    return sweep, module_home, states_seen


def test_the_grid_becomes_one_config_per_combination(style_pairs):
    sweep = Sweep(tiny_config(style_pairs), {"beta": ["0.1", "0.5"], "learning_rate": ["5e-5", "1e-4", "2e-4"]})
    configs = sweep.configs()
    assert len(configs) == 6
    assert [(c.beta, c.learning_rate) for c in configs[:3]] == [(0.1, 5e-5), (0.1, 1e-4), (0.1, 2e-4)]
    assert all(c.max_steps == 2 and c.data == str(style_pairs) for c in configs)  # everything else from the base


@pytest.mark.parametrize("grid, words", [
    ({"beta": [0.1], "learning_rate": [1e-4], "lora_r": [8]}, "at most 2 settings"),
    ({"beta": [0.1, 0.2, 0.3, 0.4], "learning_rate": [1e-5, 2e-5, 5e-5, 1e-4]}, f"makes 16 runs; a sweep runs at most {MAX_RUNS}"),
    ({"betta": [0.1, 0.2]}, "Unknown key in the grid: betta"),
    ({"beta": ["x"]}, "beta must be float, got 'x'"),
    ({"model": ["a/b", "c/d"]}, "model cannot be swept"),
    ({}, "at least one setting"),
])
def test_bad_grids_are_refused_with_a_clear_message(grid, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        check_grid(grid)


def test_a_combination_that_is_not_a_valid_config_is_refused_before_anything_runs(style_pairs, tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="beta must be > 0"):
        Sweep(tiny_config(style_pairs), {"beta": [0.1, -1]})
    assert not (tmp_path / "runs").exists() and not (tmp_path / "sweeps").exists()


def test_grid_flags_parse_into_values():
    assert parse_grid(["beta=0.1,0.5", "learning_rate=5e-5, 1e-4"]) == {"beta": ["0.1", "0.5"], "learning_rate": ["5e-5", "1e-4"]}
    with pytest.raises(ConfigError, match="KEY=V1,V2"):
        parse_grid(["beta"])
    with pytest.raises(ConfigError, match="given twice"):
        parse_grid(["beta=0.1", "beta=0.2"])


@pytest.mark.slow
def test_a_sweep_leaves_finished_runs_and_a_comparison(finished_sweep):
    sweep, home, states_seen = finished_sweep
    assert sweep.state == "done", sweep.error
    assert "training" in states_seen
    assert len(sweep.runs) == 2 and all(r.state == "done" and r.has_adapter for r in sweep.runs)
    assert {r.id for r in list_runs()} == {r.id for r in sweep.runs}  # ordinary runs, listed like any other
    assert [r.config().beta for r in sweep.runs] == [0.1, 0.5]
    rows = sweep.comparison()
    assert [row["beta"] for row in rows] == [0.1, 0.5]
    for row, run in zip(rows, sweep.runs):
        assert row["run"] == run.id and row["state"] == "done" and row["step"] == 2
        for key in ("baseline_accuracy", "tuned_accuracy", "reward_accuracy", "mean_margin", "kl_drift", "loss"):
            assert row[key] is not None, key
        assert (run.path / "eval.json").is_file()
    # the same baseline for both: one base model, the same held-out pairs
    assert rows[0]["baseline_accuracy"] == rows[1]["baseline_accuracy"]


@pytest.mark.slow
def test_each_run_and_the_sweep_folder_record_the_sweep(finished_sweep):
    sweep, home, _ = finished_sweep
    for i, run in enumerate(sweep.runs):
        assert run.read_json("sweep.json")["sweep"] == sweep.id
        assert run.read_json("sweep.json")["values"] == {"beta": [0.1, 0.5][i]}
    record = load_sweep(sweep.id)
    assert (home / "sweeps" / sweep.id / "sweep.json").is_file()
    assert record["state"] == "done" and record["grid"] == {"beta": [0.1, 0.5]}
    assert record["runs"] == [r.id for r in sweep.runs]
    assert record["entries"][1]["tuned_accuracy"] is not None
    json.dumps(record)


@pytest.mark.slow
def test_stop_ends_the_current_run_and_skips_the_rest(studio_home, style_pairs):
    sweep = Sweep(tiny_config(style_pairs, max_steps=500, eval_fraction=0), {"beta": [0.1, 0.2, 0.3]}, evaluate=False)
    sweep.start()
    import time

    deadline = time.time() + 120
    while not (sweep.current is not None and sweep.current.step >= 1) and time.time() < deadline:
        time.sleep(0.05)
    sweep.stop()
    assert sweep.wait(120) == "stopped"
    assert [e["state"] for e in sweep.entries] == ["stopped", "skipped", "skipped"]
    assert len(sweep.runs) == 1 and sweep.runs[0].has_adapter  # the stopped run keeps its adapter


def test_an_idle_sweep_box_looks_less_often_after_three_looks_that_found_nothing(studio_home):
    import gradio as gr

    from studio.config import detect_hardware
    from studio.ui.common import IDLE_SECONDS, QUIET_SECONDS
    from studio.ui.sweep_box import SweepBox

    with gr.Blocks():
        box = SweepBox(detect_hardware())
    view, timers = {}, []
    for _ in range(5):
        out = box.poll(view)
        view = out[box.view]
        timers.append(out[box.timer].value if box.timer in out else None)
    # The first look fills the note; three looks that change nothing, then the slower pace; no further updates.
    assert timers == [None, None, None, QUIET_SECONDS, None], timers
    # A training elsewhere takes the slot: the next look says so and goes back to the idle pace.
    view["busy"] = "something else"
    out = box.poll(view)
    assert box.start_btn in out and out[box.timer].value == IDLE_SECONDS
