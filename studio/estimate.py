"""How long planned training will take here: the steps each run takes, times seconds a step measured on this machine.

    sweep_estimate(base_cfg, {"beta": ["0.1", "0.5"]}, hardware)   # runs, steps, s/step and from which run, seconds

Nothing is guessed: the seconds a step come from the logged step times of the newest ended run of
the same model and method on this device (warm-up and evaluations left out). With no such run the
time is unknown and the estimate says so; the steps are still counted.
"""

from __future__ import annotations

import functools
import itertools
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .backends import planned_steps
from .config import Hardware, RunConfig, label_of, resolve_for_hardware
from .data import Columns, load_preferences
from .runs import LIVE_STATES, Run, list_runs
from .sweep import check_grid
from .training_data import examples_a_pair

# Settings that change the time a step takes; a measured run that differs in them gives a rougher estimate.
STEP_COST = ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "lora_r",
             "lora_target_modules", "gradient_checkpointing", "prompt_template")


@dataclass
class Measured:
    seconds: float  # median seconds an optimizer step took
    startup: float | None  # seconds from the run's start to its first logged step (data, model, first step)
    run: str
    differs: list[str] = field(default_factory=list)  # labels of the STEP_COST settings it ran with otherwise


def step_seconds(run: Run) -> float | None:
    """Median seconds between consecutive logged training steps of `run`; None with fewer than two.

    A gap with an evaluation in it, the first step (warm-up) and the gap across a resume are left out.
    """
    resumed = {r.get("from_step") for r in run.info.get("resumed") or []}
    gaps, previous = [], None
    for row in run.metrics():
        if "eval_loss" in row or "train_runtime" in row:
            previous = None  # the next gap holds an evaluation (or a new stint)
            continue
        if "loss" not in row or "time" not in row:
            continue
        if previous is not None and row["step"] > previous["step"] and previous["step"] not in resumed:
            gaps.append((row["time"] - previous["time"]) / (row["step"] - previous["step"]))
        previous = row
    return statistics.median(gaps) if gaps else None


def startup_seconds(run: Run) -> float | None:
    rows = [m for m in run.metrics() if "loss" in m and "time" in m]
    status = run.status()
    started = status.get("first_started") or status.get("started")
    return rows[0]["time"] - started if rows and started else None


def measured(cfg: RunConfig, hardware: Hardware) -> Measured | None:
    """The step time of the newest run (not running now) of cfg's model and method on this device, preferring one
    whose step-cost settings match cfg's."""
    fallback = None
    for run in list_runs():
        if run.progress()["state"] in LIVE_STATES:  # a failed or stopped run's steps were timed as well as any
            continue
        raw = run.read_config_raw()
        info = raw.get("_run") or {}
        if raw.get("model") != cfg.model or raw.get("method") != cfg.method:
            continue
        if info.get("device_name") != hardware.device_name:
            continue
        seconds = step_seconds(run)
        if seconds is None:
            continue
        differs = [label_of(k) for k in STEP_COST if k in raw and raw[k] != getattr(cfg, k)]
        found = Measured(seconds, startup_seconds(run), run.id, differs)
        if not differs:
            return found
        fallback = fallback or found
    return fallback


def train_pairs(cfg: RunConfig) -> int:
    """The training examples a run of cfg gets: the data's usable pairs less the held-out share, each pair
    counted twice for KTO (it trains on the chosen and the rejected answer as two examples).

    Read without a tokenizer (fast), so pairs that max_length would drop still count: an upper bound.
    """
    source = Path(cfg.data)
    stamp = source.stat() if source.exists() else None
    return _train_pairs(cfg.data, stamp.st_mtime_ns if stamp else None, stamp.st_size if stamp else None,
                        cfg.prompt_col, cfg.chosen_col, cfg.rejected_col, cfg.system_col, cfg.eval_data,
                        cfg.eval_fraction, cfg.seed, cfg.objective)


@functools.lru_cache(maxsize=16)
def _train_pairs(data, _mtime, _size, prompt_col, chosen_col, rejected_col, system_col, eval_data, eval_fraction,
                 seed, objective) -> int:
    pairs = load_preferences(data, Columns(prompt_col, chosen_col, rejected_col, system_col))
    train = pairs if eval_data else pairs.split(eval_fraction, seed)[0]
    return len(train) * examples_a_pair(objective, pairs.unpaired)


def run_steps(cfg: RunConfig, pairs: int) -> int:
    return planned_steps(cfg.max_steps, cfg.num_train_epochs, pairs,
                         cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps)


def sweep_estimate(base: RunConfig, grid: dict[str, list], hardware: Hardware) -> dict:
    """Runs, steps per run, and (when a step was measured here) the training seconds of a sweep of `grid` over `base`.

    Raises ConfigError / DataError as a sweep would for a bad grid or unreadable data.
    """

    grid = check_grid(grid)
    configs = [base.replace(**dict(zip(grid, combo))) for combo in itertools.product(*grid.values())]
    steps = [run_steps(cfg, train_pairs(cfg)) for cfg in configs]
    found = measured(resolve_for_hardware(base, hardware), hardware)  # as a run records it: auto settings decided
    swept_cost = [label_of(k) for k in grid if k in STEP_COST]
    out = {"runs": len(configs), "steps": steps, "total_steps": sum(steps), "seconds_per_step": None,
           "measured_on": None, "differs": [], "startup": None, "seconds": None}
    if found is not None:
        out.update(seconds_per_step=found.seconds, measured_on=found.run, startup=found.startup,
                   differs=list(dict.fromkeys(found.differs + swept_cost)),
                   seconds=sum(steps) * found.seconds + len(configs) * (found.startup or 0.0))
    return out
