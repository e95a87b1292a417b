"""One full self-improvement round on the embedded model, headless, timed: the self-improve-cpu demo.

    python bench/self_improve.py [--preset self-improve-cpu] [--json round.json]

Generates two answers per prompt with the SFT baseline, labels the pairs with the preset's rubric,
trains round 1 on them (DPO, LoRA), then answers the held-out prompts with round 1 and the baseline
(greedy) and prints the rubric win rate of round 1 with its 95% interval, the length-controlled win
rate, the time of each phase, and a few example answers. Uses STUDIO_HOME like the app.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="self-improve-cpu")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--examples", type=int, default=4, help="example answers to print")
    args = parser.parse_args()

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    from studio.rounds import self_improve_round
    from studio.winrate import describe

    last = {}

    def progress(phase: str, done: int, total: int | None) -> None:
        # One line per phase every ~10%, so a log stays readable.
        step = max(1, (total or 10) // 10)
        if phase != last.get("phase") or done == total or done - last.get("done", 0) >= step:
            last.update(phase=phase, done=done)
            print(f"[{time.strftime('%H:%M:%S')}] {phase}: {done}/{total}", file=sys.stderr, flush=True)

    report = self_improve_round(args.preset, progress=progress)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"preset {report['preset']}: rubric {report['rubric']}: {report['goal']}")
    print(f"pool {report.get('pool')}: {report.get('labels')}; run {report.get('run')} ({report.get('run_state')}, "
          f"{report.get('steps')} steps on {report.get('pairs')} pairs)")
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in report["seconds"].items()))
    if "winrate" in report:
        print(describe(report["winrate"]))
        for ex in report["examples"][: args.examples]:
            print(f"\n## {ex['prompt']}\n[round 1] {ex['round 1']}\n[baseline] {ex['baseline']}")
    return 0 if "winrate" in report else 1


if __name__ == "__main__":
    sys.exit(main())
