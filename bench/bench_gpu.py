"""DPO speed and memory on a GPU, offline: random-weight models of real shapes, trained through the engine.

For each model x backend (transformers+PEFT, Unsloth) x method (LoRA, QLoRA) x sizing (the preset as
shipped; fitted to the card by studio.memory.fit_to_card), one fresh `python -m studio train` process
runs a fixed number of DPO steps on the twin-style pairs, exactly as a user would start it. Printed as
a table: s/step (median after warm-up), tokens/s, the share of the GPU's bf16 peak those tokens use,
peak GPU memory; then Unsloth over transformers+PEFT at equal settings (the preset sizing).

No download: each model is built from a config (`AutoModelForCausalLM.from_config`) with the embedded
SmolLM2 tokenizer. Speed and memory do not depend on the weights' values; the losses mean nothing.

    python bench/bench_gpu.py                                   # 135m and 1.7b, every combination
    python bench/bench_gpu.py --models 8b --methods qlora --steps 12
    python bench/bench_gpu.py --docs                            # also write the results into docs/gpu.md
    python bench/bench_gpu.py --dry-run                         # no GPU: check the arguments, 2 steps of a tiny model on CPU

Without CUDA it always does the dry run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This project's `studio` before any other: Unsloth's wheel installs an unrelated top-level package of that name.
sys.path.insert(0, str(ROOT))

from studio.memory import Shape, fit_to_card, planning_length  # noqa: E402 - after the path fix above

DATA = ROOT / "presets" / "data" / "twin-style.jsonl"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")
# Config overrides on the embedded SmolLM2-135M config (../shared/gpu/README.md; the Handbook's Llama-3.1-8B).
MODELS = {
    "135m": {"preset": "cpu-quickstart", "config": {}},
    "1.7b": {"preset": "smollm2-1.7b-lora", "config": dict(
        hidden_size=2048, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=32, head_dim=64,
        num_hidden_layers=24, rope_parameters={"rope_theta": 130000.0, "rope_type": "default"})},
    "8b": {"preset": "llm-twin-dpo", "config": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False,
        max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_parameters={"rope_theta": 500000.0, "rope_type": "default"})},
}
TINY = {"preset": "cpu-quickstart", "config": dict(  # the dry run: seconds on a CPU
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16)}
METHODS = ("lora", "qlora")
BACKENDS = ("transformers", "unsloth")
SIZINGS = ("preset", "fitted")
# Dense bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s (first match on the device name wins).
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0,
                    "A10": 125.0}


# --- models -----------------------------------------------------------------------------------


def tokenizer_dir() -> Path:
    from studio.models import embedded_checkpoint

    return embedded_checkpoint()  # the embedded model's tokenizer (converted once under STUDIO_HOME)


def build_model(name: str, spec: dict, out: Path, tokenizer: Path, device: str) -> Path:
    """A randomly initialised model of the shape `spec` describes, saved with the embedded tokenizer (kept if there)."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tokenizer)
    for key, value in spec["config"].items():
        setattr(config, key, value)
    torch.manual_seed(0)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with torch.device(device):  # on the GPU an 8B init takes seconds instead of minutes
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    model.save_pretrained(tmp)
    for f in TOKENIZER_FILES:
        if (tokenizer / f).is_file():
            shutil.copy(tokenizer / f, tmp)
    del model
    tmp.rename(out)
    return out


# --- one run ----------------------------------------------------------------------------------


def preset_sizing(preset: str, cuda: bool) -> dict:
    from studio.config import load_preset

    c = load_preset(preset).config
    ckpt = cuda if c.gradient_checkpointing is None else c.gradient_checkpointing  # the engine's default
    return {"per_device_train_batch_size": c.per_device_train_batch_size,
            "gradient_accumulation_steps": c.gradient_accumulation_steps, "gradient_checkpointing": ckpt}


def fitted_sizing(model_dir: Path, preset: str, method: str, backend: str, free_gb: float) -> tuple[dict, str]:
    from studio.config import load_preset
    from studio.data import load_preferences
    from studio.models import load_tokenizer

    c = load_preset(preset).config
    shape = Shape.from_config(json.loads((model_dir / "config.json").read_text()))
    tokens = load_preferences(str(DATA), tokenizer=load_tokenizer(str(model_dir))).report.tokens
    fit = fit_to_card(shape, method, backend, planning_length(c.max_length, tokens),
                      c.per_device_train_batch_size * c.gradient_accumulation_steps, free_gb,
                      lora_r=c.lora_r, targets=c.lora_target_modules)
    return fit.settings(), fit.reason


def train_command(preset: str, model_dir: Path, method: str, backend: str, sizing: dict, steps: int,
                  out: Path) -> list[str]:
    """`python -m studio train` with the preset, on the twin-style pairs, no evaluation or snapshots."""
    from studio.config import field_names

    sets = {"model": model_dir, "method": method, "eval_data": "none", "eval_fraction": 0, "eval_steps": 0,
            "save_steps": 0, "warmup_steps": 0, **sizing}
    if "backend" in field_names():  # the engine chooses per run; here each backend is asked for by name
        sets["backend"] = backend
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    return [sys.executable, "-m", "studio", "train", "--preset", preset, "--data", str(DATA), *args,
            "--max-steps", str(steps), "--out", str(out), "--quiet"]


class GpuMemory:
    """Peak used GPU memory during a run, sampled by nvidia-smi every 250 ms (the whole card, as a user sees it)."""

    def __init__(self, log: Path):
        self.log = log
        self.proc = None
        self.out = None

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self.out = self.log.open("w")
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                          "-lms", "250"], stdout=self.out, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
            self.out.close()

    def peak_mib(self) -> int | None:
        values = [int(v) for v in self.log.read_text().split() if v.strip().isdigit()] if self.log.is_file() else []
        return max(values) if values else None


def run_one(cmd: list[str], out: Path, env: dict, timeout: float, tokens_a_step: float | None = None) -> dict:
    """Run one training process; its s/step, tokens/s, backend and versions from the run folder."""
    t0 = time.time()
    with GpuMemory(out.with_suffix(".mem")) as mem:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    result = {"wall_s": round(time.time() - t0, 1), "rc": proc.returncode, "peak_gpu_mib": mem.peak_mib(),
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024}
    if proc.returncode != 0:
        result["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return result
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "loss" in r and not any(k.startswith("eval_") for k in r)]
    result.update(step_times(steps, tokens_a_step=tokens_a_step))
    import yaml

    info = (yaml.safe_load((out / "config.yaml").read_text()) or {}).get("_run", {})
    result.update(backend=info.get("backend"), device_name=info.get("device_name"), versions=info.get("versions", {}),
                  steps=len(steps))
    return result


def step_times(steps: list[dict], warmup: int = 2, tokens_a_step: float | None = None) -> dict:
    """Median seconds a step, after `warmup` steps (allocator and compile warm-up), and tokens a second.

    Tokens a second are the tokens a step reads (from the data, `tokens_a_step`) over the median step: TRL's
    logged `num_tokens` disagreed between backends on the same data (an H200, 2026-12-04: 2,875 tokens/s from
    it for transformers+PEFT against 9,264 from the data; Unsloth's matched the data), so it is not used.
    """
    timed = steps[warmup:] if len(steps) > warmup + 1 else steps
    gaps = [(b["time"] - a["time"]) / (b["step"] - a["step"]) for a, b in zip(timed, timed[1:]) if b["step"] > a["step"]]
    s_per_step = round(statistics.median(gaps), 4) if gaps else None
    return {"s_per_step": s_per_step,
            "tokens_per_s": round(tokens_a_step / s_per_step, 1) if s_per_step and tokens_a_step else None}


def tokens_a_pair(tokenizer: Path) -> float:
    """Tokens the policy reads for one pair of the bench data: the prompt with the chosen answer and again with
    the rejected one (means over the file; padding not counted)."""
    from studio.data import load_preferences
    from studio.models import load_tokenizer

    t = load_preferences(str(DATA), tokenizer=load_tokenizer(str(tokenizer))).report.tokens
    return 2 * t["prompt"]["mean"] + t["chosen"]["mean"] + t["rejected"]["mean"]


def bf16_fraction(tokens_per_s: float | None, params: float, gpu: str, peak_tflops: float | None) -> float | None:
    """Share of the GPU's dense bf16 peak the run's useful FLOPs reach (model FLOPs utilisation).

    A LoRA DPO step costs ~6 x params FLOPs a token: the policy's forward (2N) and backward through the frozen
    weights for the activations' gradients (2N), and the reference's forward with the adapter off (2N).
    Checkpointing's recomputed forward is not counted: it is overhead, not progress.
    """
    peak = peak_tflops or next((v for k, v in BF16_PEAK_TFLOPS.items() if k in (gpu or "")), None)
    if not tokens_per_s or not peak:
        return None
    return round(tokens_per_s * 6 * params / (peak * 1e12), 4)


# --- the table --------------------------------------------------------------------------------


def table(rows: list[dict]) -> str:
    head = ["model", "backend", "method", "sizing", "batch x accum", "ckpt", "s/step", "tokens/s", "bf16 peak",
            "peak GPU MiB", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        s = r["sizing_settings"]
        cells = [r["model"], r.get("backend") or r["asked_backend"], r["method"], r["sizing"],
                 f"{s['per_device_train_batch_size']} x {s['gradient_accumulation_steps']}",
                 "on" if s["gradient_checkpointing"] else "off", _cell(r.get("s_per_step")),
                 _cell(r.get("tokens_per_s")), _cell(r.get("bf16_fraction"), pct=True), _cell(r.get("peak_gpu_mib")),
                 _cell(r.get("wall_s"))]
        if r.get("error"):
            cells[6] = "failed: " + " ".join(r["error"])[:80].replace("|", "/")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def ratios(rows: list[dict]) -> list[str]:
    """Unsloth over transformers+PEFT at equal settings: the preset sizing, same model and method.

    Matched on the backend that actually ran (config.yaml), not the one asked for.
    """
    out = []
    for r in rows:
        if r.get("backend") != "unsloth" or r["sizing"] != "preset" or not r.get("s_per_step"):
            continue
        twin = next((t for t in rows if t.get("backend") == "transformers+peft" and t["sizing"] == "preset"
                     and t["model"] == r["model"] and t["method"] == r["method"] and t.get("s_per_step")), None)
        if twin:
            mem = (f", peak memory {r['peak_gpu_mib'] / twin['peak_gpu_mib']:.2f}x"
                   if r.get("peak_gpu_mib") and twin.get("peak_gpu_mib") else "")
            out.append(f"{r['model']} {r['method']}: Unsloth {twin['s_per_step'] / r['s_per_step']:.2f}x as fast a step"
                       f"{mem} (wall incl. start-up {twin['wall_s']} s vs {r['wall_s']} s)")
    return out


def _cell(value, pct: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:.1%}" if pct else (f"{value:g}" if isinstance(value, float) else str(value))


def markdown(rows: list[dict], header: dict) -> str:
    versions = {k: v for r in rows for k, v in (r.get("versions") or {}).items()}  # unsloth's only in its rows
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on **{header['gpu']}** ({header['free_gb']} GB free at the start), "
             f"{header['steps']} DPO steps a run on the twin-style pairs, s/step the median after 2 warm-up steps.",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", "", table(rows), ""]
    lines += [f"- {line}" for line in ratios(rows)]
    return "\n".join(lines) + "\n"


def write_docs(block: str, path: Path = ROOT / "docs" / "gpu.md") -> None:
    """Replace the results section of docs/gpu.md (between its markers) with this run's block."""
    start, end = "<!-- bench_gpu results -->", "<!-- /bench_gpu results -->"
    text = path.read_text(encoding="utf-8") if path.is_file() else f"# GPU\n\n{start}\n{end}\n"
    if start not in text:
        text += f"\n{start}\n{end}\n"
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1] if end in rest else ""
    path.write_text(f"{before}{start}\n{block}{end}{after}", encoding="utf-8")


# --- main -------------------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="135m,1.7b", help=f"comma-separated: {', '.join(MODELS)} (default 135m,1.7b)")
    p.add_argument("--methods", default=",".join(METHODS), help="lora, qlora or both (default both)")
    p.add_argument("--backends", default=",".join(BACKENDS), help="transformers, unsloth or both (default both)")
    p.add_argument("--sizings", default=",".join(SIZINGS), help="preset (as shipped), fitted (to this card), or both")
    p.add_argument("--steps", type=int, default=12, help="DPO steps a run (default 12; the first 2 are warm-up)")
    p.add_argument("--timeout", type=float, default=900, help="seconds a run may take before it counts as failed")
    p.add_argument("--models-dir", help="where the built models are kept (default STUDIO_HOME/bench-models)")
    p.add_argument("--tokenizer", help="a folder with the SmolLM2 tokenizer and config (default: the embedded model)")
    p.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, when its name is not in the table")
    p.add_argument("--docs", action="store_true", help="write the results into docs/gpu.md")
    p.add_argument("--dry-run", action="store_true", help="check the arguments, then 2 steps of a tiny model on CPU")
    args = p.parse_args(argv)
    problems = []
    for name, allowed in (("models", MODELS), ("methods", METHODS), ("backends", BACKENDS), ("sizings", SIZINGS)):
        values = [v.strip().lower() for v in getattr(args, name).split(",") if v.strip()]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            problems.append(f"--{name}: {', '.join(bad) or 'nothing given'} not among {', '.join(allowed)}")
        setattr(args, name, values)
    if args.steps < 3:
        problems.append(f"--steps must be at least 3 (2 warm-up steps, then timed ones), got {args.steps}")
    if problems:
        p.error("; ".join(problems))
    return args


def dry_run(args: argparse.Namespace, home: Path) -> list[dict]:
    """A tiny model, two steps on CPU, through the same command and parsing as the real runs."""
    model_dir = build_model("tiny", TINY, home / "bench-models" / "tiny", Path(args.tokenizer or tokenizer_dir()), "cpu")
    sizing = preset_sizing(TINY["preset"], cuda=False)
    fitted, reason = fitted_sizing(model_dir, TINY["preset"], "lora", "transformers", free_gb=8.0)
    print(f"fitted (for an imaginary 8 GB card, not run): {fitted}; {reason}", file=sys.stderr)
    out = home / "runs" / "dry-run"
    cmd = train_command(TINY["preset"], model_dir, "lora", "transformers", {**sizing, "max_length": 64}, 2, out)
    pairs = sizing["per_device_train_batch_size"] * sizing["gradient_accumulation_steps"]
    result = run_one(cmd, out, {**os.environ, "STUDIO_HOME": str(home), "CUDA_VISIBLE_DEVICES": ""}, args.timeout,
                     tokens_a_step=pairs * tokens_a_pair(model_dir))
    row = {"model": "tiny", "asked_backend": "transformers", "method": "lora", "sizing": "preset",
           "sizing_settings": sizing, **result}
    if result["rc"] != 0:
        raise SystemExit(f"dry run failed: {' '.join(result['error'])}")
    if result.get("steps") != 2:
        raise SystemExit(f"dry run: expected 2 logged steps, got {result.get('steps')}")
    return [row]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    gpu, free_gb = _gpu()
    if gpu is None and not args.dry_run:
        print("no CUDA GPU: doing the dry run", file=sys.stderr)
        args.dry_run = True
    if args.dry_run:
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            real_home = Path(os.environ.get("STUDIO_HOME", "studio_home")).resolve()
            if (real_home / "models").is_dir():  # reuse the converted embedded model
                (home / "models").symlink_to(real_home / "models", target_is_directory=True)
            os.environ["STUDIO_HOME"] = str(home)
            rows = dry_run(args, home)
        print(table(rows))
        print(f"dry run passed: 2 steps in {rows[0]['wall_s']} s (peak RSS {rows[0]['peak_rss_mib']} MiB)")
        return 0

    from studio.config import studio_home

    models_dir = Path(args.models_dir) if args.models_dir else studio_home() / "bench-models"
    tokenizer = Path(args.tokenizer) if args.tokenizer else tokenizer_dir()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    rows = []
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    for name in args.models:
        spec = MODELS[name]
        # Built in a child process, so this one holds no CUDA memory while the runs measure theirs.
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import bench_gpu as b; "
                        "from pathlib import Path; b.build_model(sys.argv[2], b.MODELS[sys.argv[2]], Path(sys.argv[3]), "
                        "Path(sys.argv[4]), 'cuda')", str(Path(__file__).parent), name, str(models_dir / name),
                        str(tokenizer)], check=True, env=env)
        model_dir = models_dir / name
        params = Shape.from_config(json.loads((model_dir / "config.json").read_text())).params
        pair_tokens = tokens_a_pair(model_dir)
        for backend in args.backends:
            for method in args.methods:
                preset = spec["preset"] if not (name == "1.7b" and method == "qlora") else "smollm2-1.7b-qlora"
                for sizing_name in args.sizings:
                    if sizing_name == "preset":
                        sizing, reason = preset_sizing(preset, cuda=True), "as shipped"
                    else:
                        sizing, reason = fitted_sizing(model_dir, preset, method, backend, _gpu()[1] or free_gb)
                    out = work / f"{name}-{backend}-{method}-{sizing_name}"
                    cmd = train_command(preset, model_dir, method, backend, sizing, args.steps, out)
                    print(f"[{name} {backend} {method} {sizing_name}] {sizing} ({reason})", file=sys.stderr, flush=True)
                    try:
                        pairs = sizing["per_device_train_batch_size"] * sizing["gradient_accumulation_steps"]
                        result = run_one(cmd, out, env, args.timeout, tokens_a_step=pairs * pair_tokens)
                    except subprocess.TimeoutExpired:
                        result = {"rc": 124, "error": [f"timed out after {args.timeout:.0f} s"], "wall_s": args.timeout}
                    row = {"model": name, "asked_backend": backend, "method": method, "sizing": sizing_name,
                           "sizing_settings": sizing, "fit_reason": reason, **result}
                    row["bf16_fraction"] = bf16_fraction(row.get("tokens_per_s"), params, gpu, args.peak_tflops)
                    rows.append(row)
                    print(table([row]).splitlines()[-1], file=sys.stderr, flush=True)
    header = {"gpu": gpu, "free_gb": round(free_gb or 0, 1), "steps": args.steps}
    block = markdown(rows, header)
    print(block)
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "gpu.json").write_text(json.dumps({**header, "rows": rows}, indent=2, default=str))
    if args.docs:
        write_docs(block)
    return 0 if all(r.get("rc") == 0 for r in rows) else 1


def _gpu() -> tuple[str | None, float | None]:
    """The first GPU's name and free memory in GB, from nvidia-smi: asking torch would leave a CUDA context
    (hundreds of MB) in this process while the runs measure theirs. (None, None) without a GPU."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, check=True, timeout=30).stdout.splitlines()[0]
        name, free = out.rsplit(",", 1)
        return name.strip(), int(re.findall(r"\d+", free)[0]) / 1024
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None, None


if __name__ == "__main__":
    sys.exit(main())
