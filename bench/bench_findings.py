"""The data doctor's speed on this machine: findings without a model on N pairs, truncation with the embedded
tokenizer, and suspect labels with the embedded model, batched against one pair at a time.

    python bench/bench_findings.py [--pairs 10000] [--suspect-pairs 64] [--no-model]

The pairs are made up (distinct prompts, some exact and near duplicates, some swapped copies, answers of
mixed length). Each figure is the best of --repeats runs; the machine and its load are printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORDS = ("the plan works when each step is small and checked before the next one starts so mistakes stay "
         "cheap and easy to undo while the rest of the work keeps moving forward").split()


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        roll = rng.random()
        if rows and roll < 0.02:
            rows.append(dict(rng.choice(rows)))  # exact duplicate
        elif rows and roll < 0.04:
            r = rng.choice(rows)
            rows.append({"prompt": r["prompt"].upper(), "chosen": " " + r["chosen"], "rejected": r["rejected"] + "!"})
        elif rows and roll < 0.05:
            r = rng.choice(rows)
            rows.append({"prompt": r["prompt"], "chosen": r["rejected"], "rejected": r["chosen"]})
        else:
            words = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
            rows.append({"prompt": f"Question {i}: {words(rng.randint(5, 30))}?",
                         "chosen": words(rng.randint(10, 120)), "rejected": words(rng.randint(10, 120))})
    return rows


def best(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--suspect-pairs", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-model", action="store_true", help="only the model-free findings")
    args = parser.parse_args()

    from studio.config import RunConfig
    from studio.data import load_preferences
    from studio.data.findings import counts, find_all
    from studio.training_data import data_findings

    folder = Path(tempfile.mkdtemp(prefix="bench-findings-"))
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_rows(args.pairs)), encoding="utf-8")
    held = folder / "held.jsonl"
    held.write_text("".join(json.dumps(r) + "\n" for r in make_rows(500, seed=1)), encoding="utf-8")
    cores = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.machine()}, {cores} CPU cores, {platform.python_version()}, load average {load:.1f}")
    print(f"data: {args.pairs} pairs ({path.stat().st_size / 2**20:.1f} MB JSONL), held-out file 500 pairs\n")
    print("| step | seconds | pairs/s | notes |\n| --- | ---: | ---: | --- |")

    read_s, data = best(lambda: load_preferences(path), args.repeats)
    print(f"| read + normalise (load_preferences, no tokenizer) | {read_s:.2f} | {len(data) / read_s:,.0f} | the existing `data check` |")
    cfg = RunConfig(data=str(path), eval_data=str(held))
    find_s, found = best(lambda: find_all(data, load_preferences(held), "held.jsonl", train=data), args.repeats)
    print(f"| findings without a model (incl. reading the held-out file) | {find_s:.2f} | {len(data) / find_s:,.0f} | "
          f"{', '.join(f'{k} {v}' for k, v in counts(found).items())} |")
    split_cfg = RunConfig(data=str(path))
    split_s, _ = best(lambda: data_findings(split_cfg, data), args.repeats)
    print(f"| findings against the run's own split (grouped seeded split) | {split_s:.2f} | {len(data) / split_s:,.0f} | |")
    if args.no_model:
        return 0

    import torch

    from studio.chat import ChatEngine
    from studio.data.findings import truncated
    from studio.suspects import margins
    from studio.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model("embedded"))
    tok_s, cut = best(lambda: truncated(data, tokenizer, cfg.max_length), 1)
    print(f"| truncated (embedded tokenizer, max_length {cfg.max_length}) | {tok_s:.2f} | {len(data) / tok_s:,.0f} | "
          f"{len(cut)} pairs cut |")
    engine = ChatEngine("embedded", dtype=torch.float32)
    sample = data.pairs[: args.suspect_pairs]
    margins(engine, sample[:4], batch_size=4)  # warm-up
    for batch in (1, 16):
        s, _ = best(lambda: margins(engine, sample, batch_size=batch, max_length=cfg.max_length), 1)
        print(f"| suspects, embedded model fp32, batch {batch} | {s:.2f} | {len(sample) / s:,.1f} | "
              f"{len(sample)} pairs, both answers scored |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
