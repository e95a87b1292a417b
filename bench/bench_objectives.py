"""Speed of the objectives against DPO, and what the reference cache saves a sweep. Ratios, printed; never asserted.

1. Seconds per step of ORPO, SimPO and KTO against DPO: the studio's TrainingJob on the same data (the first
   `--pairs` twin-style pairs), LoRA, batch, max_length and step count; step 1 is left out (warm-up). DPO is
   measured twice: as the studio runs it (reference log-probs precomputed once, from the cache), and as it ran
   before (`dpo-ref-each-step`: the base model's forward pass in every step, TRL's default).
2. A DPO sweep of two learning rates (a real `Sweep`, evaluation off) on an empty cache: its second run reads the
   reference log-probs its first run computed. Printed: the second run's time to its first step, whole time and
   step time, each over the first run's.

    python bench/bench_objectives.py [--steps 8] [--pairs 24] [--max-length 256]

Say the machine and its load with the figures (the script prints both).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT / "presets" / "data" / "twin-style.jsonl"


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").is_file() else "?"


def config(data: Path, steps: int, max_length: int, objective: str):
    from studio.config import RunConfig

    return RunConfig(model="embedded", data=str(data), max_steps=steps, eval_fraction=0.0, eval_steps=0,
                     max_length=max_length, per_device_train_batch_size=2, learning_rate=5e-5, lora_r=16,
                     lora_alpha=32, save_steps=0, objective=objective)


def step_seconds(run_dir: Path) -> tuple[float, float, float]:
    """(median seconds per step without step 1, seconds from start to the first step, whole seconds)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    times = [r["time"] for r in rows if "loss" in r]
    status = json.loads((run_dir / "status.json").read_text())
    gaps = [b - a for a, b in zip(times, times[1:])]
    return statistics.median(gaps), times[0] - status["started"], status["finished"] - status["started"]


def train(cfg, reference_each_step: bool = False) -> Path:
    from studio import objectives
    from studio.training import TrainingJob

    saved = objectives._ALL["dpo"]
    if reference_each_step:  # TRL's default: no precomputation, the base model runs in every step
        objectives._ALL["dpo"] = dataclasses.replace(saved, reference=False)
    try:
        job = TrainingJob(cfg, preset="bench").start()
        assert job.wait() == "done", job.error
    finally:
        objectives._ALL["dpo"] = saved
    return job.run.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--objectives", default="dpo,dpo-ref-each-step,orpo,simpo,kto")
    parser.add_argument("--no-sweep", action="store_true")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bench-objectives-"))
    cache = Path(os.environ.get("STUDIO_TEST_MODEL_CACHE", ""))
    if cache.is_dir():
        (home / "models").symlink_to(cache, target_is_directory=True)
    os.environ.update(STUDIO_HOME=str(home), HF_HUB_OFFLINE="1")
    data = home / "pairs.jsonl"
    data.write_text("".join(DATA.read_text(encoding="utf-8").splitlines(keepends=True)[:args.pairs]), encoding="utf-8")

    from studio import refcache
    from studio.config import detect_hardware

    print(f"machine: {detect_hardware().device_name}; load at start {load()}; {args.pairs} pairs, "
          f"{args.steps} steps, batch 2, max_length {args.max_length}, LoRA r16 on every projection")
    per_step = {}
    for name in args.objectives.split(","):
        objective = "dpo" if name.startswith("dpo") else name
        refcache.clear()  # every objective pays for its own reference pass here (measured apart from the steps)
        path = train(config(data, args.steps, args.max_length, objective), reference_each_step=name == "dpo-ref-each-step")
        step, first, whole = step_seconds(path)
        per_step[name] = step
        print(f"{name:>18}: {step:6.2f} s/step   first step after {first:6.1f} s   whole run {whole:6.1f} s   "
              f"(load {load()})")
    if "dpo" in per_step:
        for name, step in per_step.items():
            if name != "dpo":
                print(f"{name} step time / DPO step time: {step / per_step['dpo']:.2f}")

    if args.no_sweep:
        return
    from studio.sweep import Sweep

    refcache.clear()
    sweep = Sweep(config(data, args.steps, args.max_length, "dpo"), {"learning_rate": [5e-5, 1e-4]}, preset="bench",
                  evaluate=False).start()
    sweep.wait()
    (s1, f1, w1), (s2, f2, w2) = (step_seconds(run.path) for run in sweep.runs)
    hits = [[e["hit"] for e in run.info.get("ref_cache", [])] for run in sweep.runs]
    print(f"sweep of 2 DPO runs (reference cache hits per run: {hits}; load {load()}):")
    print(f"  run 1: {s1:.2f} s/step, first step after {f1:.1f} s, whole {w1:.1f} s")
    print(f"  run 2: {s2:.2f} s/step, first step after {f2:.1f} s, whole {w2:.1f} s")
    print(f"  second run / first: step time {s2 / s1:.2f}, time to first step {f2 / f1:.2f}, whole run {w2 / w1:.2f}")


if __name__ == "__main__":
    main()
