"""KTO's unpaired layout (prompt / completion / label): detected like the other layouts, bad rows named, refused
by the paired objectives with a message naming the one that reads it, and pairs split for KTO."""

import json

import pytest

from studio.config import RunConfig
from studio.data import DataError, load_preferences
from studio.training_data import check_sources, to_trl


def write_jsonl(tmp_path, rows, name="thumbs.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


THUMBS = [
    {"prompt": "Name a fruit.", "completion": "Apple.", "label": True},
    {"prompt": "Name a fruit.", "completion": "It is important to note that fruit is multifaceted.", "label": False},
    {"prompt": "Name a colour.", "completion": "Blue.", "label": "up"},
    {"prompt": "Name a colour.", "completion": "Colours are a spectrum.", "label": "👎"},
    {"prompt": "Name a tree.", "completion": "Oak.", "label": 1},
    {"prompt": "Name a tree.", "completion": "Trees, in conclusion, vary.", "label": "thumbs down"},
]


def test_unpaired_strings_are_detected_and_every_thumbs_value_read(tmp_path):
    data = load_preferences(write_jsonl(tmp_path, THUMBS))
    report = data.report
    assert data.unpaired and report.unpaired and report.layout.startswith("prompt/completion/label")
    assert report.used == {"prompt": "prompt", "completion": "completion", "label": "label"}
    assert [item["label"] for item in data.pairs] == [True, False, True, False, True, False]
    assert report.labels == {"up": 3, "down": 3} and report.pairs == 6 and not report.dropped
    first = data.pairs[0]
    assert first["prompt"] == [{"role": "user", "content": "Name a fruit."}]
    assert first["completion"] == [{"role": "assistant", "content": "Apple."}]


def test_trl_conversational_unpaired_rows_are_read(tmp_path):
    rows = [{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Say {w}."}],
             "completion": [{"role": "assistant", "content": w}], "label": i % 2 == 0}
            for i, w in enumerate(["yes", "no", "maybe", "never"])]
    data = load_preferences(write_jsonl(tmp_path, rows))
    assert data.unpaired and "conversations" in data.report.layout
    assert data.pairs[1]["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert data.pairs[1]["completion"] == [{"role": "assistant", "content": "no"}] and data.pairs[1]["label"] is False
    dataset = data.to_dataset()
    assert dataset.column_names == ["prompt", "completion", "label"] and dataset["label"] == [True, False, True, False]


def test_bad_unpaired_rows_are_dropped_with_their_row_and_reason(tmp_path):
    rows = THUMBS[:2] + [
        {"prompt": "Name a dog.", "completion": "Rex.", "label": "maybe"},
        {"prompt": "Name a cat.", "completion": "Tom."},
        {"prompt": "Name a bird.", "completion": "", "label": True},
        {"prompt": "Name a fish.", "completion": "Nemo.", "label": 7},
    ]
    report = load_preferences(write_jsonl(tmp_path, rows)).report
    reasons = {d["row"]: d["reason"] for d in report.dropped}
    assert set(reasons) == {3, 4, 5, 6}
    assert "label must be a thumbs up or down" in reasons[3] and "'maybe'" in reasons[3]
    assert reasons[4] == "label is missing"
    assert reasons[5] == "completion is empty"
    assert "got 7" in reasons[6]


def test_a_file_of_unusable_thumbs_says_so(tmp_path):
    rows = [{"prompt": "a", "completion": "b", "label": "perhaps"}]
    with pytest.raises(DataError, match="No usable thumbs-up/down examples.*row 1: label must be"):
        load_preferences(write_jsonl(tmp_path, rows))


@pytest.mark.parametrize("objective", ["dpo", "orpo", "simpo"])
def test_a_paired_objective_refuses_a_kto_file_naming_the_objective_that_reads_it(tmp_path, objective):
    path = write_jsonl(tmp_path, THUMBS)
    with pytest.raises(DataError) as refused:
        check_sources(RunConfig(data=str(path), objective=objective))
    message = str(refused.value)
    assert str(path) in message and "only objective kto reads" in message and f"objective {objective} needs pairs" in message
    check_sources(RunConfig(data=str(path), objective="kto"))  # the objective that reads it: accepted


def test_a_kto_eval_file_is_refused_too(tmp_path):
    pairs = write_jsonl(tmp_path, [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(4)],
                        "pairs.jsonl")
    thumbs = write_jsonl(tmp_path, THUMBS)
    with pytest.raises(DataError, match=r"\(eval_data\).*only objective kto reads"):
        check_sources(RunConfig(data=str(pairs), eval_data=str(thumbs), objective="orpo"))


def test_pairs_train_kto_as_one_thumbs_up_and_one_thumbs_down_each(tmp_path):
    rows = [{"prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(5)]
    pairs = load_preferences(write_jsonl(tmp_path, rows, "pairs.jsonl"))
    cfg = RunConfig(data="x", objective="kto")
    dataset = to_trl(pairs, cfg)
    assert dataset.column_names == ["prompt", "completion", "label"] and len(dataset) == 10
    seen = {(r["prompt"][0]["content"], r["completion"][0]["content"], r["label"]) for r in dataset}
    assert seen == {(f"question {i}", f"good {i}", True) for i in range(5)} | {(f"question {i}", f"bad {i}", False)
                                                                               for i in range(5)}
    assert list(dataset["label"]) != [True, False] * 5  # shuffled by the seed: a batch mixes prompts
    assert to_trl(pairs, cfg)["completion"] == dataset["completion"]  # ... the same order each time
    alpaca = to_trl(pairs, cfg.replace(prompt_template="alpaca"))
    assert isinstance(alpaca[0]["prompt"], str) and "### Instruction" in alpaca[0]["prompt"]
    assert isinstance(alpaca[0]["completion"], str)
    assert to_trl(pairs, cfg.replace(objective="orpo")).column_names == ["prompt", "chosen", "rejected"]


def test_unpaired_token_counts_have_a_completion_part(tmp_path, studio_home):
    from studio.models import load_tokenizer, resolve_model

    data = load_preferences(write_jsonl(tmp_path, THUMBS), tokenizer=load_tokenizer(resolve_model("embedded")),
                            max_length=256)
    assert set(data.report.tokens) == {"prompt", "completion", "pair"}
    assert data.report.tokens["completion"]["min"] >= 1


def test_held_out_accuracy_needs_pairs_and_reference_free_objectives_score_on_the_plain_log_ratio(tmp_path,
                                                                                                 studio_home):
    from studio.errors import EvalError
    from studio.evaluate import eval_pairs
    from studio.objectives import reward_beta
    from studio.runs import Run

    thumbs = write_jsonl(tmp_path, THUMBS)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    Run(run_dir).write_config(RunConfig(data=str(thumbs), objective="kto", eval_fraction=0.5))
    with pytest.raises(EvalError, match="single answers with a thumbs up or down.*--data FILE"):
        eval_pairs(Run(run_dir))
    pairs = write_jsonl(tmp_path, [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(3)],
                        "pairs.jsonl")
    scored, source = eval_pairs(Run(run_dir), data=str(pairs))  # a KTO run is scored on a file of pairs
    assert len(scored) == 3 and source["source"] == str(pairs)
    assert reward_beta(RunConfig(objective="dpo", beta=0.2)) == 0.2
    assert reward_beta(RunConfig(objective="kto", beta=0.3)) == 0.3
    assert reward_beta(RunConfig(objective="orpo", beta=0.2)) == reward_beta(RunConfig(objective="simpo")) == 1.0
