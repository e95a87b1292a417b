"""A real DPO run with `loss_type: [sigmoid, sft]` (the RPO recipe) trains on both terms.

TRL 1.14 sums the weighted terms into one `loss` and logs only that sum: there is no per-term
metric (DPOTrainer._compute_loss logs entropy, logits, token accuracy, rewards and logps, never a
term of the loss). So the test separates the terms through the first step, where the LoRA adapter
is still zero (lora B is initialised to 0, dropout 0) and the policy equals the reference:

- the sigmoid DPO term is exactly ln 2 there (every implicit reward is 0);
- the sft term is the chosen answers' mean token NLL, which an `sft`-only run of the same seed
  (same first batch) logs on its own;
- so the combined run's first logged loss must be ln 2 + w * sft, for the weight w it was given.

And the sft term must have moved the weights: from the second step on, the combined run's
rewards differ from a sigmoid-only run's of the same seed and data.
"""

import math

import pytest

from studio.runs import Run
from studio.training import TrainingJob

from helpers import quick_config

LN2 = math.log(2.0)
pytestmark = pytest.mark.slow  # three real runs
SFT_WEIGHT = 0.5  # not 1, so a test that passed by summing unweighted terms would fail


def train(data, steps=3, **changes) -> list[dict]:
    """The training rows of a finished run of `steps` steps, as the studio wrote them to metrics.jsonl."""
    # No held-out split: the test reads training rows only, and a final evaluation would add time, not evidence.
    job = TrainingJob(quick_config(data, max_steps=steps, eval_fraction=0, **changes), preset="test").start()
    job.wait()
    assert job.state == "done", job.error
    rows = Run(job.run.path).metrics()
    return [r for r in rows if "loss" in r and "eval_loss" not in r]


@pytest.fixture(scope="module")
def runs(module_home, style_pairs):
    return {
        "sigmoid": train(style_pairs, loss_type=["sigmoid"]),
        # only its first step is read (before any update, so the length of the run cannot change it)
        "sft": train(style_pairs, steps=1, loss_type=["sft"]),
        "both": train(style_pairs, loss_type=["sigmoid", "sft"], loss_weights=[1.0, SFT_WEIGHT]),
    }


def test_the_first_step_logs_the_weighted_sum_of_both_terms(runs):
    sigmoid, sft, both = (runs[k][0] for k in ("sigmoid", "sft", "both"))
    assert [r["step"] for r in runs["both"]] == [1, 2, 3]
    assert sigmoid["loss"] == pytest.approx(LN2, abs=1e-4)  # policy == reference at step 1
    nll = sft["loss"]
    assert nll > 0.5, "the chosen answers are not the model's own: their token NLL is well above 0"
    # the same batch both times: the chosen answers' summed log-probability agrees
    assert both["logps/chosen"] == pytest.approx(sft["logps/chosen"], rel=1e-4)
    assert both["loss"] == pytest.approx(LN2 + SFT_WEIGHT * nll, abs=1e-3)
    assert both["loss"] - sigmoid["loss"] > 0.25  # far above any rounding of the logged loss


def test_the_sft_term_changes_what_training_does(runs):
    sigmoid, both = runs["sigmoid"], runs["both"]
    # step 1 saw identical weights; from step 2 on the weights differ by the sft term's gradient
    assert both[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6) == sigmoid[0]["rewards/margins"]
    later = [(b["rewards/chosen"], s["rewards/chosen"]) for b, s in zip(both[1:], sigmoid[1:])]
    assert any(abs(b - s) > 1e-4 for b, s in later), later
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in both)
