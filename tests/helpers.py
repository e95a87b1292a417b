"""Plain helpers shared by the test modules (fixtures live in conftest.py; a test module never imports another)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from transformers import TrainerCallback

from studio.config import RunConfig


def quick_config(data, **changes) -> RunConfig:
    """A short real run on the embedded model: 6 steps of 2 pairs, 64 tokens, LoRA r 8 on q and v."""
    base = dict(model="embedded", data=str(data), max_steps=6, per_device_train_batch_size=2, learning_rate=1e-3,
                beta=0.1, lora_r=8, lora_alpha=16, max_length=64, eval_fraction=0.25, eval_steps=3, save_steps=0,
                lora_target_modules=["q_proj", "v_proj"])
    return RunConfig(**{**base, **changes})


def link_shared(home: Path, model_cache: Path, refcache: Path | None = None) -> Path:
    """`home` as a STUDIO_HOME that shares the session's converted model (and, given one, its reference cache)."""
    (home / "models").symlink_to(model_cache, target_is_directory=True)
    if refcache is not None:
        (home / "refcache").symlink_to(refcache, target_is_directory=True)
    return home


def wait_for(predicate, timeout=120.0, poll=0.05) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# What /check_upload (and the other data checks) return, in order; layout blocks and gr.State are not in the API.
DATA_OUTPUTS = ("summary", "prompt", "chosen", "rejected", "system", "raw", "histogram", "dropped", "preview", "data",
                "eval_data", "prompt_col", "chosen_col", "rejected_col", "system_col", "findings", "drop_kinds",
                "suspect_rows")


class At(TrainerCallback):
    """Does `action(model)` at the end of step `step`: the fault a test injects into a real run."""

    def __init__(self, step, action):
        self.step, self.action = step, action

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            self.action(model)


def answer_pool(label: str, answers, question: str = "Question {n}?"):
    """A finished generation pool of the embedded baseline: one prompt per (short, long) answer pair in `answers`."""
    from studio.pools import create_pool

    pool = create_pool("generate", label, models=[{"name": "SFT baseline (embedded)", "model": "embedded"}],
                       base_model="embedded", round=1, seed=0)
    for n, (short, long) in enumerate(answers):
        pool.add_candidate([{"role": "user", "content": question.format(n=n)}],
                           [{"text": t, "name": "SFT baseline (embedded)"} for t in (short, long)])
    pool.update(state="done", done=len(answers))
    return pool
