"""Evaluation says what DPO changed: held-out accuracy baseline vs tuned, implicit rewards, probe grids."""

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from studio.config import RunConfig
from studio.evaluate import EvalError, evaluate_run, result_row, sequence_logps
from studio.measures import (
    LENGTH_RATIO_BAND,
    MEASURE_LABELS,
    PROBE_KEYS,
    REPETITION_RISE,
    damage_warnings,
    distinct_n,
    flesch_reading_ease,
    measures,
    repeated_ngram_share,
)
from studio.probes import (
    BASELINE_NAME,
    GENERIC_PROBES,
    HANDBOOK_PROBE,
    default_probes,
    grid_to_csv,
    grid_to_markdown,
    probe_grid,
    probe_settings,
)
from studio.runs import Run

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
def trained(home, finished_run):
    """The session's shared short run (conftest.SHARED_RUN), copied into this module's home: a few steps at a high
    learning rate on a tiny, consistent preference, plain answers over padded ones."""
    return finished_run


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_eval_measures_the_probe_answers_of_baseline_and_tuned(trained_eval, style_pairs):
    r = trained_eval
    for key in (*PROBE_KEYS, "damage"):
        assert key in r, key
    for key in ("repetition", "baseline_repetition", "distinct_2", "baseline_distinct_2", "ended_on_own",
                "baseline_ended_on_own"):
        assert r[key] is None or 0.0 <= r[key] <= 1.0, (key, r[key])
    assert r["distinct_2"] > 0 and r["baseline_distinct_2"] > 0
    assert r["mean_words"] > 0 and r["baseline_mean_words"] > 0
    assert r["length_ratio"] == pytest.approx(r["mean_words"] / r["baseline_mean_words"], abs=1e-3)
    # The length the preference asks for: the chosen answers of the 12 scored pairs, counted from the file.
    rows = [json.loads(line) for line in style_pairs.read_text().splitlines()][:12]
    chosen = sum(len(r_["chosen"].split()) for r_ in rows) / 12
    assert r["chosen_mean_words"] == pytest.approx(chosen, abs=0.1)
    assert r["chosen_length_ratio"] == pytest.approx(r["mean_words"] / r["chosen_mean_words"], abs=1e-3)
    probes = r["probes"]
    assert [p["prompt"] for p in probes] == PROBES and all(p["baseline_answer"].strip() for p in probes)
    assert all(isinstance(p["ended_on_own"], bool) and isinstance(p["baseline_ended_on_own"], bool) for p in probes)
    assert r["ended_on_own"] == sum(p["ended_on_own"] for p in probes) / len(probes)
    # The warnings follow from the measures in the same result: one on repetition exactly when it rose more than
    # REPETITION_RISE over the baseline's, one on length exactly when the ratio left LENGTH_RATIO_BAND, and only
    # when the accuracy rose.
    rose = r["tuned_accuracy"] > r["baseline_accuracy"]
    repeats = rose and r["repetition"] is not None and r["repetition"] - (r["baseline_repetition"] or 0.0) > REPETITION_RISE
    low, high = LENGTH_RATIO_BAND
    off_length = rose and r["length_ratio"] is not None and not low <= r["length_ratio"] <= high
    kinds = [("repeat" in w, " longer" in w or " shorter" in w) for w in r["damage"]]
    assert kinds == [(True, False)] * repeats + [(False, True)] * off_length, (r["damage"], r)
    assert r["damage"] == damage_warnings(r)


@pytest.mark.slow
def test_the_compare_table_row_carries_the_damage_measures(trained, trained_eval, tmp_path):
    row = result_row(trained)
    assert row["length_ratio"] == trained_eval["length_ratio"] and row["repetition"] == trained_eval["repetition"]
    warnings = trained_eval["damage"]
    assert row["damage"] == (" ".join(f"⚠ {w}" for w in warnings) if warnings else None)
    # Both kinds of cell whatever this run's probes gave: the warnings joined, each marked; none is an empty cell.
    copy = Run(Path(shutil.copytree(trained.path, tmp_path / trained.id)))
    copy.write_json("eval.json", {**trained_eval, "damage": ["The answers repeat.", "The answers got longer."]})
    assert result_row(copy)["damage"] == "⚠ The answers repeat. ⚠ The answers got longer."
    copy.write_json("eval.json", {**trained_eval, "damage": []})
    assert result_row(copy)["damage"] is None


@pytest.mark.slow
def test_stream_reports_whether_each_answer_ended_on_its_own(engine):
    from studio.chat import GenerationSettings

    prompts = ["Reply with one word: yes or no. Is water wet?", "Tell me one thing about tea."]
    finished: list[bool] = []
    texts = [""] * 2
    for texts in engine.stream([[{"role": "user", "content": p}] for p in prompts], [None, None],
                               GenerationSettings(max_new_tokens=6), finished=finished):
        pass
    assert len(finished) == 2
    lengths = [len(engine.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    for done, n in zip(finished, lengths):
        # An answer that ended on EOS used fewer than the limit's tokens; a cut one used all of them.
        assert (n < 6) if done else (n == 6), (finished, lengths, texts)
    assert finished == [True, False], texts  # a one-word answer ends; "one thing about tea" runs on


@pytest.mark.slow
def test_eval_json_is_written_to_the_run_folder(trained, trained_eval):
    saved = json.loads((trained.path / "eval.json").read_text())
    assert saved == json.loads(json.dumps(trained_eval))
    for key in ("pairs", "baseline_accuracy", "tuned_accuracy", "reward_accuracy", "mean_margin", "kl_drift", "data"):
        assert key in saved, key
    assert saved["data"]["source"].endswith("pairs.jsonl")
    assert [p["prompt"] for p in saved["probes"]] == PROBES


@pytest.mark.slow
def test_without_data_the_run_is_scored_on_the_pairs_training_held_out(trained, engine):
    r = evaluate_run(trained, engine=engine, probes=[], save=False)
    assert r["pairs"] == trained.read_json("data.json")["eval_pairs"] == 3
    assert "held out" in r["data"]["split"] and r["kl_drift"] is None


@pytest.fixture(scope="module")
def untrained_eval(untrained, engine, style_pairs):
    return evaluate_run(untrained, data=str(style_pairs), engine=engine, probes=PROBES[:1], settings=SHORT)


@pytest.mark.slow
def test_a_runs_eval_data_file_is_its_held_out_set(untrained, engine, style_pairs):
    run = untrained
    cfg = run.config()
    run.write_config(cfg.replace(eval_data=str(style_pairs)), preset="test")
    try:
        r = evaluate_run(run, engine=engine, probes=[], save=False)
    finally:
        run.write_config(cfg, preset="test")
    assert r["pairs"] == 12 and r["data"] == {"source": str(style_pairs), "split": "eval_data file"}


@pytest.mark.slow
def test_an_unchanged_adapter_scores_exactly_like_the_baseline(untrained_eval):
    r = untrained_eval
    assert r["tuned_accuracy"] == r["baseline_accuracy"]
    assert r["reward_accuracy"] == 0.0 and r["mean_margin"] == 0.0  # no pair's reward moved, so none is "higher"
    assert r["kl_drift"] == 0.0
    assert r["tuned_logp_gap"] == r["baseline_logp_gap"]
    # The same weights give the same probe answers: every damage measure equals the baseline's, no warning.
    assert r["repetition"] == r["baseline_repetition"] and r["distinct_2"] == r["baseline_distinct_2"]
    assert r["length_ratio"] == 1.0 and r["ended_on_own"] == r["baseline_ended_on_own"] and r["damage"] == []
    assert all(p["answer"] == p["baseline_answer"] for p in r["probes"])


@pytest.mark.slow
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


@pytest.mark.slow
def test_probe_grid_has_a_baseline_column_and_one_per_run(trained, untrained, engine):
    grid = probe_grid([trained, untrained], PROBES, engine=engine, settings=SHORT)
    assert grid["prompts"] == PROBES
    assert [c["name"] for c in grid["columns"]] == [BASELINE_NAME, trained.id, untrained.id]
    for column in grid["columns"]:
        assert len(column["answers"]) == len(PROBES) and all(a.strip() for a in column["answers"])
        assert set(column["measures"]) == set(MEASURE_LABELS)
        assert 0.0 <= column["measures"]["ended_on_own"] <= 1.0
    assert grid["columns"][0]["measures"]["length_ratio"] == 1.0
    # A zero adapter answers exactly like the baseline.
    assert grid["columns"][2]["answers"] == grid["columns"][0]["answers"]
    json.dumps(grid)  # JSON-serialisable, for the web app and --json


@pytest.mark.slow
def test_probe_grid_is_deterministic_under_fixed_settings(trained, engine):
    first = probe_grid([trained], PROBES, engine=engine, settings=SHORT, reuse=False)
    again = probe_grid([trained], PROBES, engine=engine, settings=SHORT, reuse=False)
    assert first == again
    # Reusing the run's probes.json gives the same column without generating it again.
    assert probe_grid([trained], PROBES, engine=engine, settings=SHORT) == first
    assert trained.read_json("probes.json")["answers"] == first["columns"][1]["answers"]


@pytest.mark.slow
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
    # 6 words: 3 four-grams, none repeated; 5 word pairs, all distinct.
    assert measures(["I like tea. It is simple."]) == {"words": 6.0, "readability": 105.1, "first_person": 0.5,
                                                       "repetition": 0.0, "distinct_2": 1.0, "ended_on_own": None}
    assert measures(["", "We went home."], [True, False]) == {
        "words": 1.5, "readability": pytest.approx(119.2, abs=0.1), "first_person": 1.0,
        "repetition": None, "distinct_2": 1.0, "ended_on_own": 0.5}  # no answer reaches 4 words
    assert measures([]) == {"words": 0.0, "readability": None, "first_person": 0.0, "repetition": None,
                            "distinct_2": None, "ended_on_own": None}


LOOPING = "The cat sat on the mat. " * 10  # 60 words, 57 four-grams; only the first 6 are new
CLEAN = "I'd start small. Pick one dish you like and cook it twice this week."
CUT = "Start with eggs, then rice, then a soup, and after that you can try"


def test_repetition_and_distinct_2_on_known_texts():
    assert repeated_ngram_share(LOOPING) == pytest.approx(51 / 57)
    assert repeated_ngram_share(CLEAN) == 0.0
    assert repeated_ngram_share("THE cat sat on the cat sat on") == pytest.approx(1 / 5)  # case does not hide a repeat
    assert repeated_ngram_share("Too short.") is None
    assert distinct_n([LOOPING]) == pytest.approx(6 / 59)  # 6 distinct word pairs among 59
    assert distinct_n([CLEAN, CLEAN]) == pytest.approx(0.5)  # the same answer twice: every pair seen twice
    assert distinct_n(["a b", "b a"]) == 1.0 and distinct_n(["one"]) is None


def test_measures_of_a_looping_a_clean_and_a_cut_answer():
    m = measures([LOOPING, CLEAN, CUT], finished=[False, True, False])
    assert m["repetition"] == pytest.approx((51 / 57) / 3, abs=1e-3)  # the mean over the three answers
    assert m["ended_on_own"] == pytest.approx(1 / 3, abs=1e-3)  # only the clean one ended on its own
    assert m["words"] == pytest.approx((60 + 14 + 14) / 3, abs=0.1)
    clean = measures([CLEAN, CUT], finished=[True, True])
    assert clean["repetition"] == 0.0 and clean["ended_on_own"] == 1.0 and clean["distinct_2"] > m["distinct_2"]


def _result(**changes):
    base = {"baseline_accuracy": 0.5, "tuned_accuracy": 0.9, "repetition": 0.02, "baseline_repetition": 0.02,
            "mean_words": 100.0, "baseline_mean_words": 100.0, "length_ratio": 1.0, "ended_on_own": 1.0,
            "baseline_ended_on_own": 1.0}
    return {**base, **changes}


def test_damage_is_flagged_only_when_accuracy_rose_and_the_answers_moved_far():
    assert damage_warnings(_result()) == []
    looping = damage_warnings(_result(repetition=0.02 + REPETITION_RISE + 0.01))
    assert len(looping) == 1 and "repeat" in looping[0] and "0.50 -> 0.90" in looping[0]
    assert damage_warnings(_result(repetition=0.02 + REPETITION_RISE - 0.01)) == []
    low, high = LENGTH_RATIO_BAND
    longer = damage_warnings(_result(length_ratio=high + 0.2, mean_words=150.0, ended_on_own=0.5))
    assert len(longer) == 1 and "longer" in longer[0] and "token limit" in longer[0]
    assert "shorter" in damage_warnings(_result(length_ratio=low - 0.1))[0]
    assert damage_warnings(_result(length_ratio=high)) == [] and damage_warnings(_result(length_ratio=low)) == []
    # Shorter than the baseline but as long as the chosen answers: said as the preference's length, not as damage.
    learned = damage_warnings(_result(length_ratio=0.36, mean_words=36.0, chosen_mean_words=40.0, chosen_length_ratio=0.9))
    assert len(learned) == 1 and "as long as the chosen answers" in learned[0] and "learned length" not in learned[0]
    overshot = damage_warnings(_result(length_ratio=0.06, mean_words=6.0, chosen_mean_words=20.0, chosen_length_ratio=0.3))
    assert "learned length rather than" in overshot[0] and "chosen answers average 20.0 words" in overshot[0]
    both = damage_warnings(_result(repetition=0.5, length_ratio=2.0))
    assert len(both) == 2
    # Accuracy that did not rise: no warning, however the answers changed (the accuracy already says it failed).
    assert damage_warnings(_result(tuned_accuracy=0.5, repetition=0.5, length_ratio=2.0)) == []
    assert damage_warnings(_result(repetition=None, length_ratio=None, baseline_repetition=None)) == []


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
    assert [r[0] for r in rows[3:]] == [f"[{label}]" for label in MEASURE_LABELS.values()]
    assert rows[3][0] == "[mean words]" and rows[3][1:] == ["2", "3.5"]
    readability = 3 + list(MEASURE_LABELS).index("readability")
    assert rows[readability][1:] == ["80.5", ""]


def test_grid_exports_to_a_markdown_table():
    lines = grid_to_markdown(GRID).strip().split("\n")
    assert lines[0] == f"| prompt | {BASELINE_NAME} | run-1 |"
    assert lines[1] == "| --- | --- | --- |"
    assert lines[3] == "| Two \\| lines? | One<br>Two | A \"quoted\" \\| pipe |"
    assert len(lines) == 2 + 2 + len(MEASURE_LABELS)
    first_person = 4 + list(MEASURE_LABELS).index("first_person")
    assert lines[first_person].startswith("| **first-person sentences (share)** | 0 | 0.5 |")
