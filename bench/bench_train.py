"""Seconds per DPO step: the engine's TrainingJob against a bare TRL DPOTrainer script, same process.

All three train the embedded SmolLM2-135M with the same LoRA, data and DPO settings (fp32, no
gradient checkpointing: the CPU defaults):
  - bare:        a hand-written TRL script, in the main thread (what a notebook does);
  - bare-thread: the same script in a background thread (what any app that trains must do);
  - engine:      studio's TrainingJob (a background thread, live metrics, run folder).
The order rotates each round so drift in machine load hits all three. Then, each in a fresh process
(as a user runs them): the bare script against `python -m studio train` with the same settings. Last,
the cold start: from `python -m studio train` process start to the first logged step.

    python bench/bench_train.py [--steps 12] [--rounds 3]
    python bench/bench_train.py --only bare --steps 12    # one bare run in this process; prints s/step
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT / "presets" / "data" / "twin-style.jsonl"


def settings(steps: int):
    from studio.config import RunConfig, resolve_for_hardware

    return resolve_for_hardware(RunConfig(
        model="embedded", data=str(DATA), max_steps=steps, eval_fraction=0.0, max_length=256,
        per_device_train_batch_size=2, learning_rate=5e-5, beta=0.1, lora_r=16, lora_alpha=32, save_steps=0,
    ))


def per_step(times: list[float]) -> float:
    # Step 1 carries one-off work (allocator warm-up, first dataloader batch): leave it out.
    gaps = [b - a for a, b in zip(times, times[1:])]
    return statistics.median(gaps)


def bare_trl(steps: int, home: Path) -> float:
    """What a user would write by hand with TRL, PEFT and transformers."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from studio.models import embedded_checkpoint

    path = embedded_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    raw = load_dataset("json", data_files=str(DATA), split="train")
    # The same conversational form the engine feeds TRL (TRL's standard string form would skip the chat template).
    dataset = raw.map(lambda r: {"prompt": [{"role": "user", "content": r["prompt"]}],
                                 "chosen": [{"role": "assistant", "content": r["chosen"]}],
                                 "rejected": [{"role": "assistant", "content": r["rejected"]}]})
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.time())

    args = DPOConfig(output_dir=str(home / "bare"), max_steps=steps, per_device_train_batch_size=2,
                     learning_rate=5e-5, beta=0.1, max_length=256, bf16=False, gradient_checkpointing=False,
                     logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, optim="adamw_torch",
                     lr_scheduler_type="linear", seed=0)
    peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft, callbacks=[Stamp()])
    trainer.train()
    return per_step(stamps)


def in_thread(fn, *args):
    out = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)))
    thread.start()
    thread.join()
    return out[0]


def engine(steps: int, home: Path) -> float:
    from studio.training import TrainingJob

    job = TrainingJob(settings(steps), run_dir=home / f"engine-{time.time_ns()}").start()
    job.wait()
    assert job.state == "done", job.error
    return per_step([m["time"] for m in job.metrics.since(0) if "loss" in m])


def cli_overrides() -> list[str]:
    cfg = settings(1)
    keys = ("eval_fraction", "max_length", "per_device_train_batch_size", "learning_rate", "beta", "lora_r",
            "lora_alpha", "save_steps", "warmup_steps", "lora_dropout", "seed", "lr_scheduler_type")
    return [arg for k in keys for arg in ("--set", f"{k}={getattr(cfg, k)}")] + ["--set", "eval_data=none"]


def fresh_processes(steps: int, home: Path, rounds: int) -> dict:
    """The bare script and `python -m studio train`, each in its own new process, alternating."""
    env = {**os.environ, "STUDIO_HOME": str(home)}
    bare, cli = [], []
    for r in range(rounds):
        for name in (("bare", "cli") if r % 2 == 0 else ("cli", "bare")):
            if name == "bare":
                out = subprocess.run([sys.executable, __file__, "--only", "bare", "--steps", str(steps)], env=env,
                                     capture_output=True, text=True, check=True).stdout
                bare.append(float(out.strip().splitlines()[-1]))
            else:
                run_dir = home / f"cli-{time.time_ns()}"
                subprocess.run([sys.executable, "-m", "studio", "train", "--preset", "cpu-quickstart", "--data",
                                str(DATA), *cli_overrides(), "--max-steps", str(steps), "--out", str(run_dir),
                                "--quiet"], cwd=ROOT, env=env, capture_output=True, check=True)
                rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
                cli.append(per_step([row["time"] for row in rows if "loss" in row]))
        print(f"fresh processes, round {r + 1}: bare {bare[-1]:.3f} s/step, cli {cli[-1]:.3f} s/step", flush=True)
    return {"process_bare_s_per_step": round(statistics.median(bare), 3),
            "process_cli_s_per_step": round(statistics.median(cli), 3),
            "process_cli_over_bare": round(statistics.median(cli) / statistics.median(bare), 3)}


def cold_start(home: Path) -> dict:
    env = {**os.environ, "STUDIO_HOME": str(home)}
    out = home / "cold"
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "studio", "train", "--preset", "cpu-quickstart",
                             "--max-steps", "2", "--out", str(out), "--quiet"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = None
    while proc.poll() is None or first is None:
        metrics = out / "metrics.jsonl"
        if first is None and metrics.is_file() and metrics.read_text().strip():
            first = json.loads(metrics.read_text().splitlines()[0])["time"]
        if proc.poll() is not None and first is None:
            break
        time.sleep(0.05)
    proc.wait()
    return {"cold_start_s": (first - t0) if first else None, "exit_code": proc.returncode}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["bare"], help="one bare run in this process (used by the fresh-process rounds)")
    args = parser.parse_args()
    if args.only:
        print(bare_trl(args.steps, Path(os.environ.get("STUDIO_HOME", tempfile.mkdtemp()))))
        return

    import torch
    from studio.config import studio_home
    from studio.models import embedded_checkpoint

    embedded_checkpoint()  # convert once, outside the timings
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        (home / "models").symlink_to(studio_home() / "models", target_is_directory=True)
        os.environ["STUDIO_HOME"] = str(home)
        times = {"bare": [], "bare-thread": [], "engine": []}
        runners = {"bare": lambda: bare_trl(args.steps, home), "bare-thread": lambda: in_thread(bare_trl, args.steps, home),
                   "engine": lambda: engine(args.steps, home)}
        names = list(runners)
        for r in range(args.rounds):
            for name in names[r % 3:] + names[:r % 3]:
                times[name].append(runners[name]())
            print(f"round {r + 1}: " + ", ".join(f"{n} {t[-1]:.3f} s/step" for n, t in times.items()), flush=True)
        processes = fresh_processes(args.steps, home, args.rounds)
        cold = cold_start(home)
    med = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "steps": args.steps, "rounds": args.rounds,
        **{f"{name}_s_per_step": round(v, 3) for name, v in med.items()},
        "engine_over_bare": round(med["engine"] / med["bare"], 3),
        "engine_over_bare_thread": round(med["engine"] / med["bare-thread"], 3),
        "bare_thread_over_bare": round(med["bare-thread"] / med["bare"], 3), **processes, **cold,
    }
    print(json.dumps(result, indent=2))
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "train.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
