"""The data doctor on a file with planted defects that the tests never saw (issue 20's "done when").

Builds an 81-pair preference file the way real data goes wrong: exact duplicates, the same pair again with
other whitespace and case, one pair with its answers the other way round, 5 prompts that also sit in a
held-out file of 12 pairs, 3 pairs far longer than max_length (one whose cut leaves both answers the same),
8 pairs whose chosen and rejected answers are swapped, and chosen answers shorter than rejected ones in
nearly every pair. Then it runs `python -m studio data check FILE --eval-data HELD --json` as a user would
and checks that every kind is found with the rows planted, and nothing else.

    python scripts/doctor_check.py                 # findings without training (about a minute)
    python scripts/doctor_check.py --train         # also trains a run on the file and checks its suspects

STUDIO_HOME defaults to a temporary folder; STUDIO_TEST_MODEL_CACHE (a converted embedded model) is reused.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUBJECTS = ["a sourdough starter", "a bike chain", "a tomato plant", "a leaky tap", "a slow laptop", "a job interview",
            "a first marathon", "a cat that scratches", "a noisy neighbour", "a sore back", "a camping trip",
            "a wedding toast", "a budget spreadsheet", "a cover letter", "a houseplant", "a cold shower",
            "a chess opening", "a guitar string", "a rainy weekend", "a new puppy", "a compost heap", "a cracked phone",
            "a long flight", "a pasta sauce", "a study plan", "a team meeting", "a birthday party", "a garden fence",
            "a winter coat", "a reading list", "a morning routine", "a podcast episode", "a car battery",
            "a kitchen knife", "a paper plane", "a bread oven", "a stuck zipper", "a moving day", "a quiet evening",
            "a spice rack", "a flat tyre", "a night shift"]
ASKS = ["How do I deal with {}?", "What should I know about {}?"]
FILLER = ("It is important to note that, in conclusion, {} is a multifaceted topic with numerous considerations, "
          "and many factors may need to be taken into account before any decision can be made.")


def concise(subject: str) -> str:
    return f"Keep it simple with {subject}. Do one small thing today."


def verbose(subject: str) -> str:
    return FILLER.format(subject)


def build(folder: Path, seed: int = 3) -> tuple[Path, Path, dict]:
    """(data file, held-out file, expected findings: kind -> sorted rows)."""
    rng = random.Random(seed)
    prompts = [ask.format(s) for s in SUBJECTS for ask in ASKS]
    rng.shuffle(prompts)
    base = [{"prompt": p, "chosen": concise(p.split(" ", 5)[-1].rstrip("?")), "rejected": verbose(p.split(" ", 5)[-1].rstrip("?"))}
            for p in prompts[:74]]
    # 3 pairs far longer than max_length 512: long chosen and rejected; the third differs only at its end.
    essay = " ".join(f"Step {i}: check the part, clean it, and write down what you saw." for i in range(160))
    base[10] = {"prompt": base[10]["prompt"], "chosen": "In short: " + essay, "rejected": "At length: " + essay + " " + essay}
    base[30] = {"prompt": base[30]["prompt"], "chosen": "First, " + essay[: len(essay) // 2], "rejected": "Well, " + essay}
    base[50] = {"prompt": base[50]["prompt"], "chosen": essay + " Then rest.", "rejected": essay + " Then never rest, ever."}
    swapped_at = [3, 8, 17, 24, 39, 45, 58, 66]  # indices into base: chosen and rejected the wrong way round
    for i in swapped_at:
        base[i] = {**base[i], "chosen": base[i]["rejected"], "rejected": base[i]["chosen"]}
    rows = list(base)  # 74 unique pairs, then the copies, inserted further down the file
    inserts = [  # (position, row, kind, index of the original in base)
        (20, dict(base[2]), "duplicate", 2),
        (40, dict(base[5]), "duplicate", 5),
        (60, dict(base[12]), "duplicate", 12),
        (33, {"prompt": "  " + base[6]["prompt"].upper() + "  ", "chosen": base[6]["chosen"].lower() + "!",
              "rejected": base[6]["rejected"].replace(" ", "  ")}, "near_duplicate", 6),
        (50, {"prompt": base[7]["prompt"].lower(), "chosen": "  " + base[7]["chosen"],
              "rejected": base[7]["rejected"].rstrip(".")}, "near_duplicate", 7),
        (70, {"prompt": base[9]["prompt"] + "\n", "chosen": base[9]["chosen"].upper(),
              "rejected": base[9]["rejected"]}, "near_duplicate", 9),
        (65, {"prompt": base[13]["prompt"], "chosen": base[13]["rejected"], "rejected": base[13]["chosen"]},
         "conflict", 13),
    ]
    tagged = [(row, None, None) for row in rows]
    for position, row, kind, original in sorted(inserts, key=lambda x: x[0]):
        tagged.insert(position, (row, kind, original))
    assert len(tagged) == 81
    row_of_base = {}
    for number, (row, kind, original) in enumerate(tagged, 1):
        if kind is None:
            row_of_base[len(row_of_base)] = number
    expected: dict[str, list[int]] = {k: [] for k in ("duplicate", "near_duplicate", "conflict", "eval_overlap",
                                                      "truncated", "length_bias", "small_eval", "suspect_label")}
    for number, (row, kind, original) in enumerate(tagged, 1):
        if kind:
            expected[kind] += [row_of_base[original], number]
    leaked = [15, 27, 35, 47, 62]  # base pairs whose prompt is also in the held-out file
    expected["eval_overlap"] = [row_of_base[i] for i in leaked]
    expected["truncated"] = [row_of_base[i] for i in (10, 30, 50)]
    expected["suspect_label"] = [row_of_base[i] for i in swapped_at]
    chosen_shorter = [n for n, (row, *_ ) in enumerate(tagged, 1) if len(row["chosen"].split()) < len(row["rejected"].split())]
    expected["length_bias"] = chosen_shorter
    data = folder / "planted.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row, *_ in tagged), encoding="utf-8")
    held = [{"prompt": base[i]["prompt"], "chosen": "Short and kind.", "rejected": verbose("it")} for i in leaked]
    held += [{"prompt": p, "chosen": concise("it"), "rejected": verbose("it")} for p in prompts[74:81]]
    held_out = folder / "planted.eval.jsonl"
    held_out.write_text("".join(json.dumps(row) + "\n" for row in held), encoding="utf-8")
    expected["small_eval"] = list(range(1, len(held) + 1))
    return data, held_out, {k: sorted(set(v)) for k, v in expected.items()}


def studio(*args: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "studio", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"`studio {' '.join(args)}` exited {out.returncode}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout) if "--json" in args else {}


def found_rows(findings: list[dict], kind: str) -> list[int]:
    return sorted({r for f in findings if f["kind"] == kind for r in f["rows"]})


def compare(kind: str, got: list[int], want: list[int]) -> bool:
    ok = got == want
    print(f"{'ok  ' if ok else 'FAIL'} {kind:<15} found rows {got}" + ("" if ok else f"\n     expected rows {want}"))
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", action="store_true", help="also train a run on the file and check its suspects")
    parser.add_argument("--max-steps", type=int, default=60, help="training steps with --train (default 60)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="doctor-check-"))
    # Passive OpenMP waits: on a shared CPU, spinning threads make a training step many times slower.
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    env.setdefault("STUDIO_HOME", str(work / "home"))
    cache = os.environ.get("STUDIO_TEST_MODEL_CACHE")
    home = Path(env["STUDIO_HOME"])
    if cache and not (home / "models").exists():
        home.mkdir(parents=True, exist_ok=True)
        (home / "models").symlink_to(cache, target_is_directory=True)
    data, held_out, expected = build(work)
    print(f"planted file: {data} (81 pairs), held-out file: {held_out} (12 pairs)")
    t0 = time.time()
    report = studio("data", "check", str(data), "--eval-data", str(held_out), "--json", env=env)
    print(f"data check: {time.time() - t0:.1f} s, {len(report['findings'])} findings, rows read {report['rows']}, "
          f"usable {report['pairs']}")
    ok = report["pairs"] == 81
    for kind in ("duplicate", "near_duplicate", "conflict", "eval_overlap", "truncated", "length_bias", "small_eval"):
        ok &= compare(kind, found_rows(report["findings"], kind), expected[kind])
    no_signal = [f for f in report["findings"] if f["kind"] == "truncated" and "identical" in f["message"]]
    ok &= compare("  no signal", found_rows(no_signal, "truncated"), [expected["truncated"][2]])
    ok &= compare("suspect (none)", found_rows(report["findings"], "suspect_label"), [])  # not without --suspects
    if args.train:
        run_dir = work / "run"
        t0 = time.time()
        studio("train", "--preset", "cpu-quickstart", "--data", str(data), "--eval-data", str(held_out),
               "--max-steps", str(args.max_steps), "--set", "learning_rate=1e-3", "--set", "beta=0.1",
               "--set", "max_length=128", "--set", "lora_r=8", "--set", "lora_alpha=16",
               "--set", "lora_target_modules=q_proj,v_proj", "--set", "eval_steps=0", "--set", "save_steps=0",
               "--out", str(run_dir), "--quiet", env=env)
        print(f"trained {run_dir.name} in {time.time() - t0:.0f} s")
        t0 = time.time()
        report = studio("data", "check", str(data), "--eval-data", str(held_out), "--model", str(run_dir),
                        "--suspects", "--json", env=env)
        suspects = [f["rows"][0] for f in report["findings"] if f["kind"] == "suspect_label"]
        top = suspects[: len(expected["suspect_label"])]
        hits = sorted(set(top) & set(expected["suspect_label"]))
        print(f"suspects ({time.time() - t0:.1f} s): ranked rows {suspects}\n     swapped rows {expected['suspect_label']}; "
              f"{len(hits)} of {len(expected['suspect_label'])} in the top {len(top)}")
        ok &= len(hits) * 2 > len(expected["suspect_label"])
    print("ALL FOUND" if ok else "SOME MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
