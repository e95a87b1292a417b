"""Evaluation says what DPO changed: held-out accuracy baseline vs tuned, implicit rewards, probe grids."""

import csv
import io
import json

import pytest
import torch

from studio.config import RunConfig
from studio.evaluate import (
    BASELINE_NAME, GENERIC_PROBES, HANDBOOK_PROBE, EvalError, default_probes, evaluate_run, flesch_reading_ease,
    grid_to_csv, grid_to_markdown, measures, probe_grid, probe_settings, sequence_logps,
)
from studio.runs import Run
from studio.training import TrainingJob

PROBES = ["Tell me one thing about tea.", "Tell me one thing about clouds."]
SHORT = probe_settings(max_new_tokens=8)


@pytest.fixture(scope="module")
def home(module_home):
    return module_home


@pytest.fixture(scope="module")
def engine(home):
    from studio.chat import ChatEngine

    return ChatEngine("embedded", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def trained(home, style_pairs):
    """A few steps at a high learning rate on a tiny, consistent preference: plain answers over padded ones."""
    cfg = RunConfig(model="embedded", data=str(style_pairs), max_steps=8, per_device_train_batch_size=4,
                    learning_rate=1e-3, beta=0.1, lora_r=8, lora_alpha=16, max_length=64, eval_fraction=0.25,
                    eval_steps=0, save_steps=0)
    job = TrainingJob(cfg, preset="test").start()
    assert job.wait(600) == "done", job.error
    return job.run


@pytest.fixture(scope="module")
def untrained(home, style_pairs):
    """A run folder whose adapter is PEFT's fresh LoRA (B = 0): tuned and baseline are the same model."""
    from peft import LoraConfig, get_peft_model

    from studio.models import load_base

    run = Run(home / "runs" / "zero-lora").create()
    cfg = RunConfig(model="embedded", data=str(style_pairs), eval_fraction=0.25, max_length=64, beta=0.1)
    run.write_config(cfg, preset="test")
    model, _ = load_base("embedded", device="cpu")
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")).save_pretrained(
        str(run.adapter_dir))
    run.write_status(state="done", step=0)
    return run


@pytest.fixture(scope="module")
def trained_eval(trained, engine, style_pairs):
    return evaluate_run(trained, data=str(style_pairs), engine=engine, probes=PROBES, settings=SHORT)


def test_dpo_moves_the_preference_towards_the_chosen_answers(trained_eval):
    r = trained_eval
    assert r["pairs"] == 12
    assert r["tuned_accuracy"] > r["baseline_accuracy"] or r["tuned_accuracy"] == 1.0
    assert r["tuned_accuracy"] >= 0.9
    assert r["reward_accuracy"] >= 0.9
    assert r["mean_margin"] > 0 and r["mean_reward_chosen"] > r["mean_reward_rejected"]
    assert r["tuned_logp_gap"] > r["baseline_logp_gap"]
    assert r["kl_drift"] is not None and r["kl_drift"] > 0  # the tuned model favours its own answers more than SFT does
    assert r["beta"] == 0.1 and r["dtype"] == "float32"


def test_eval_json_is_written_to_the_run_folder(trained, trained_eval):
    saved = json.loads((trained.path / "eval.json").read_text())
    assert saved == json.loads(json.dumps(trained_eval))
    for key in ("pairs", "baseline_accuracy", "tuned_accuracy", "reward_accuracy", "mean_margin", "kl_drift", "data"):
        assert key in saved, key
    assert saved["data"]["source"].endswith("pairs.jsonl")
    assert [p["prompt"] for p in saved["probes"]] == PROBES


def test_without_data_the_run_is_scored_on_the_pairs_training_held_out(trained, engine):
    r = evaluate_run(trained, engine=engine, probes=[], save=False)
    assert r["pairs"] == trained.read_json("data.json")["eval_pairs"] == 3
    assert "held out" in r["data"]["split"] and r["kl_drift"] is None


@pytest.fixture(scope="module")
def untrained_eval(untrained, engine, style_pairs):
    return evaluate_run(untrained, data=str(style_pairs), engine=engine, probes=PROBES[:1], settings=SHORT)


def test_a_runs_eval_data_file_is_its_held_out_set(untrained, engine, style_pairs):
    run = untrained
    cfg = run.config()
    run.write_config(cfg.replace(eval_data=str(style_pairs)), preset="test")
    try:
        r = evaluate_run(run, engine=engine, probes=[], save=False)
    finally:
        run.write_config(cfg, preset="test")
    assert r["pairs"] == 12 and r["data"] == {"source": str(style_pairs), "split": "eval_data file"}


def test_an_unchanged_adapter_scores_exactly_like_the_baseline(untrained_eval):
    r = untrained_eval
    assert r["tuned_accuracy"] == r["baseline_accuracy"]
    assert r["reward_accuracy"] == 0.0 and r["mean_margin"] == 0.0  # no pair's reward moved, so none is "higher"
    assert r["kl_drift"] == 0.0
    assert r["tuned_logp_gap"] == r["baseline_logp_gap"]


def test_baseline_accuracy_is_the_plain_base_model_measured_per_token(untrained_eval, engine, style_pairs):
    """Cross-check by hand: score every pair with sequence_logps on the base weights (adapters off)."""
    from studio.data import load_preferences

    pairs = load_preferences(str(style_pairs)).pairs
    prompts = [p["prompt"] for p in pairs]
    with engine.model.disable_adapter():
        chosen = sequence_logps(engine.model, engine.tokenizer, prompts, [p["chosen"][0]["content"] for p in pairs], mean=True)
        rejected = sequence_logps(engine.model, engine.tokenizer, prompts, [p["rejected"][0]["content"] for p in pairs], mean=True)
    assert untrained_eval["baseline_accuracy"] == pytest.approx(float((chosen > rejected).float().mean()))
    assert untrained_eval["baseline_logp_gap"] == pytest.approx(float((chosen - rejected).mean()), abs=1e-4)


def test_a_run_without_an_adapter_is_refused(home):
    run = Run(home / "runs" / "empty").create()
    run.write_config(RunConfig(data="x.jsonl"))
    run.write_status(state="failed")
    with pytest.raises(EvalError, match="no saved adapter"):
        evaluate_run(run)


# --- probe grids -------------------------------------------------------------------------------


def test_probe_grid_has_a_baseline_column_and_one_per_run(trained, untrained, engine):
    grid = probe_grid([trained, untrained], PROBES, engine=engine, settings=SHORT)
    assert grid["prompts"] == PROBES
    assert [c["name"] for c in grid["columns"]] == [BASELINE_NAME, trained.id, untrained.id]
    for column in grid["columns"]:
        assert len(column["answers"]) == len(PROBES) and all(a.strip() for a in column["answers"])
        assert set(column["measures"]) == {"words", "readability", "first_person"}
    # A zero adapter answers exactly like the baseline.
    assert grid["columns"][2]["answers"] == grid["columns"][0]["answers"]
    json.dumps(grid)  # JSON-serialisable, for the web app and --json


def test_probe_grid_is_deterministic_under_fixed_settings(trained, engine):
    first = probe_grid([trained], PROBES, engine=engine, settings=SHORT, reuse=False)
    again = probe_grid([trained], PROBES, engine=engine, settings=SHORT, reuse=False)
    assert first == again
    # Reusing the run's probes.json gives the same column without generating it again.
    assert probe_grid([trained], PROBES, engine=engine, settings=SHORT) == first
    assert trained.read_json("probes.json")["answers"] == first["columns"][1]["answers"]


def test_default_probes_come_from_the_presets_probes_file(trained, tmp_path):
    from studio.config import PRESETS_DIR

    run = Run(tmp_path / "r").create()
    run.write_config(RunConfig(data=str(PRESETS_DIR / "data" / "twin-style.jsonl")))
    expected = (PRESETS_DIR / "data" / "twin-style.probes.txt").read_text().split("\n")
    assert default_probes(run) == [p for p in expected if p.strip()]
    assert default_probes(trained) == GENERIC_PROBES and GENERIC_PROBES[0] == HANDBOOK_PROBE


# --- measures and export (no model) ------------------------------------------------------------


def test_measures_on_a_hand_checked_answer():
    # 6 words, 2 sentences (one with "I"), 7 syllables (simple = sim-ple):
    # 206.835 - 1.015 * 6/2 - 84.6 * 7/6 = 105.09
    assert measures(["I like tea. It is simple."]) == {"words": 6.0, "readability": 105.1, "first_person": 0.5}
    assert measures(["", "We went home."]) == {"words": 1.5, "readability": pytest.approx(119.2, abs=0.1),
                                              "first_person": 1.0}
    assert measures([]) == {"words": 0.0, "readability": None, "first_person": 0.0}


def test_formal_padded_prose_reads_harder_than_plain_prose():
    plain = "I'd start small. Pick one dish you like and cook it twice this week."
    formal = ("It is important to note that there are numerous considerations associated with culinary education. "
              "Individuals may wish to consider structured instructional opportunities.")
    assert flesch_reading_ease(plain) > flesch_reading_ease(formal) + 30
    assert measures([plain])["first_person"] == 0.5 and measures([formal])["first_person"] == 0.0
    assert measures(["See i.e. the notes."])["first_person"] == 0.0  # a lone lowercase i is not a person


GRID = {
    "prompts": ["Say hi", "Two | lines?"],
    "columns": [
        {"name": BASELINE_NAME, "answers": ["Hello there.", "One\nTwo"], "measures": {"words": 2.0, "readability": 80.5, "first_person": 0.0}},
        {"name": "run-1", "answers": ["Hi, I'm here.", 'A "quoted" | pipe'], "measures": {"words": 3.5, "readability": None, "first_person": 0.5}},
    ],
}


def test_grid_exports_to_csv_with_a_row_per_prompt_then_the_measures():
    rows = list(csv.reader(io.StringIO(grid_to_csv(GRID))))
    assert rows[0] == ["prompt", BASELINE_NAME, "run-1"]
    assert rows[1] == ["Say hi", "Hello there.", "Hi, I'm here."]
    assert rows[2] == ["Two | lines?", "One\nTwo", 'A "quoted" | pipe']  # quoting keeps newlines and quotes intact
    assert [r[0] for r in rows[3:]] == ["[mean words]", "[readability (Flesch reading ease)]",
                                        "[first-person sentences (share)]"]
    assert rows[3][1:] == ["2", "3.5"] and rows[4][1:] == ["80.5", ""]


def test_grid_exports_to_a_markdown_table():
    lines = grid_to_markdown(GRID).strip().split("\n")
    assert lines[0] == f"| prompt | {BASELINE_NAME} | run-1 |"
    assert lines[1] == "| --- | --- | --- |"
    assert lines[3] == "| Two \\| lines? | One<br>Two | A \"quoted\" \\| pipe |"
    assert len(lines) == 2 + 2 + 3 and lines[-1].startswith("| **first-person sentences (share)** | 0 | 0.5 |")
