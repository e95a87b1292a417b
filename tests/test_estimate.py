"""What the studio plans before a run starts: the steps a run of a config takes, as the Trainer will count them."""

import json

from studio.config import RunConfig, detect_hardware, load_preset
from studio.estimate import run_steps, sweep_estimate, train_pairs


def test_kto_counts_each_pair_as_two_examples_and_an_unpaired_file_as_it_is(tmp_path):
    paired = tmp_path / "pairs.jsonl"
    paired.write_text("".join(json.dumps({"prompt": f"Q{i}?", "chosen": f"A{i}.", "rejected": f"No {i}."}) + "\n"
                              for i in range(10)))
    unpaired = tmp_path / "thumbs.jsonl"
    unpaired.write_text("".join(json.dumps({"prompt": f"Q{i}?", "completion": f"A{i}.", "label": i % 2 == 0}) + "\n"
                                for i in range(10)))
    base = dict(eval_fraction=0.0, eval_data="", per_device_train_batch_size=4, num_train_epochs=1, max_steps=-1)
    dpo = RunConfig(data=str(paired), objective="dpo", **base)
    kto = RunConfig(data=str(paired), objective="kto", **base)
    assert (train_pairs(dpo), run_steps(dpo, train_pairs(dpo))) == (10, 3)
    assert (train_pairs(kto), run_steps(kto, train_pairs(kto))) == (20, 5)  # 20 single answers, 4 a step
    thumbs = RunConfig(data=str(unpaired), objective="kto", **base)
    assert train_pairs(thumbs) == 10


def test_a_sweep_over_the_objective_plans_each_runs_own_steps():
    base = load_preset("twin-style-cpu").config
    plan = sweep_estimate(base, {"objective": ["dpo", "kto"]}, detect_hardware())
    batch = base.per_device_train_batch_size * base.gradient_accumulation_steps
    pairs = train_pairs(base)
    assert plan["steps"] == [-(-pairs // batch), -(-2 * pairs // batch)], plan  # KTO: twice the examples
