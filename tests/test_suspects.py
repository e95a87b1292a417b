"""Suspect labels with a real model: the embedded model's own taste, batched, and a run trained on a file with
planted swapped pairs, which learns the majority preference and then ranks the swapped pairs first."""

import json

import pytest
import torch

from studio.config import RunConfig
from studio.data import load_preferences
from studio.suspects import find_suspects, margins, suspect_count
from studio.runs import Run
from studio.training import TrainingJob

TOPICS = ["tea", "bread", "git", "python", "running", "sleep", "rain", "maps", "music", "paint", "bikes", "soup",
          "chess", "kites", "clay", "owls", "jazz", "tides", "moss", "rice", "glass", "salt", "wool", "ink"]
SWAPPED = [3, 9, 14, 20]  # rows whose chosen and rejected answers are the wrong way round


def style_row(topic: str) -> dict:
    return {"prompt": f"Tell me one thing about {topic}.", "chosen": f"I like {topic}. It is simple.",
            "rejected": f"It is important to note that, in conclusion, {topic} is a multifaceted topic with numerous "
                        "considerations."}


@pytest.fixture(scope="module")
def swapped_file(tmp_path_factory):
    rows = []
    for row, topic in enumerate(TOPICS, 1):
        pair = style_row(topic)
        if row in SWAPPED:
            pair = {**pair, "chosen": pair["rejected"], "rejected": pair["chosen"]}
        rows.append(pair)
    path = tmp_path_factory.mktemp("suspects") / "swapped.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def engine(module_home):
    from studio.chat import ChatEngine

    return ChatEngine("embedded", dtype=torch.float32)


@pytest.mark.slow
def test_the_embedded_model_ranks_a_nonsense_chosen_answer_first_and_batching_changes_nothing(tmp_path, engine):
    rows = [style_row(t) for t in TOPICS[:7]]
    rows.insert(4, {"prompt": "What is the capital of France?", "chosen": "zq xv plorb wugg fnarl kex",
                    "rejected": "The capital of France is Paris."})
    path = tmp_path / "nonsense.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_preferences(path)
    one_by_one = margins(engine, data.pairs, batch_size=1)
    batched = margins(engine, data.pairs, batch_size=8)
    assert batched == pytest.approx(one_by_one, abs=2e-3)  # padding and order do not change a pair's score
    found = find_suspects(data, "embedded", engine=engine)
    assert found and found[0]["kind"] == "suspect_label" and found[0]["rows"] == [5]
    assert "Suspect 1 of" in found[0]["message"] and "embedded prefers the rejected answer of row 5" in found[0]["message"]
    scores = sorted(one_by_one)
    assert len(found) == min(suspect_count(len(rows)), sum(s < 0 for s in scores))


@pytest.fixture(scope="module")
def trained_on_swapped(module_home, swapped_file):
    # 8 steps of 2 pairs are enough: on this file the four swapped pairs score -0.7 or lower and every other pair
    # +0.6 or higher (24 steps drew the same ranking at three times the cost).
    cfg = RunConfig(model="embedded", data=str(swapped_file), max_steps=8, per_device_train_batch_size=2,
                    learning_rate=1e-3, beta=0.1, lora_r=8, lora_alpha=16, max_length=64, eval_fraction=0.0,
                    eval_steps=0, save_steps=0, seed=0, lora_target_modules=["q_proj", "v_proj"])
    job = TrainingJob(cfg, preset="test").start()
    job.wait()
    assert job.state == "done", job.error
    return Run(job.run.path)


@pytest.mark.slow
def test_a_run_trained_on_the_file_ranks_the_swapped_pairs_first(trained_on_swapped, swapped_file, engine):
    run = trained_on_swapped
    data = load_preferences(swapped_file)
    # Every pair the run scores below zero, most suspect first: `top` lifts the usual cut, so one scoring pass (the
    # costly part: each pair through the run and its base) answers both questions below.
    found = find_suspects(data, run.id, engine=engine, top=len(data.pairs))
    ranked = [f["rows"][0] for f in found]
    against = [row for row in ranked if row not in SWAPPED]
    print(f"\nsuspects ranked: {ranked} (swapped: {SWAPPED})")
    assert len(against) <= 0.2 * (len(data.rows) - len(SWAPPED)), ranked  # it learned what most pairs agree on
    assert len(set(ranked[: len(SWAPPED)]) & set(SWAPPED)) >= 3, ranked
    assert "implicit reward margin per token" in found[0]["message"] and f"run {run.id}" in found[0]["message"]
    # The run's data.json carries the data doctor's findings: nothing held out here.
    recorded = run.read_json("data.json")["findings"]
    assert [f["kind"] for f in recorded] == ["length_bias", "small_eval"]
    assert "No pairs are held out" in recorded[1]["message"] and "answer briefly" in recorded[0]["message"]


@pytest.mark.slow
def test_compare_shows_a_small_evaluation_with_its_interval_and_warns_on_the_data(trained_on_swapped, engine,
                                                                                   tmp_path):
    from studio.evaluate import evaluate_run
    from studio.ui.compare_tab import data_warning, results_frame

    run = trained_on_swapped
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps(style_row(t)) + "\n" for t in ("lakes", "forks", "drums", "pears")))
    result = evaluate_run(run, data=str(held), engine=engine, probes=[])
    assert result["pairs"] == 4
    frame = results_frame([run.id])
    cell = frame["tuned acc"][0]
    assert cell.startswith(f"{result['tuned_accuracy']:.2f} (95% ") and cell.endswith(", 4 pairs)")
    assert "under 20 held-out pairs" in frame["data warning"][0]  # its data.json: nothing was held out
    # A run whose held-out prompts were also training prompts is named as such.
    leaked = {"findings": [{"kind": "eval_overlap", "rows": [3], "message": "…"},
                           {"kind": "eval_overlap", "rows": [9], "message": "…"}]}

    class Leaky:
        def read_json(self, name):
            return leaked if name == "data.json" else None

    assert data_warning(Leaky()).startswith("⚠ held-out data overlapped the training data (2 prompts)")
