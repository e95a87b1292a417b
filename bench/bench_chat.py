"""Chat speed on this machine: plain `generate`, the studio's streamed answer, and both panes at once.

    python bench/bench_chat.py [--tokens 60] [--run RUN_DIR]

Prints tokens/s for plain greedy `generate` (fp32, batch 1, no streamer) and ratios against it:
one streamed answer (must stay >= 0.9x), and baseline + tuned answering the same prompt in one
batch (target <= 1.5x the time of one answer). With --run, the tuned pane uses that run's adapter;
without, a fresh zero-initialised LoRA stands in (same compute, no training needed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROMPT = [{"role": "user", "content": "Write a paragraph to introduce supervised fine-tuning."}]


def timed(fn) -> float:
    fn()  # warm-up: first call pays allocator and kernel selection
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=60)
    parser.add_argument("--run", help="a run folder whose adapter the tuned pane uses")
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model

    from studio.chat import ChatEngine, GenerationSettings
    from studio.models import load_base

    n = args.tokens
    # min_new_tokens keeps every variant generating exactly n tokens, so times compare.
    settings = GenerationSettings(max_new_tokens=n)

    model, tok = load_base("embedded", "cpu", torch.float32)
    ids = tok.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        plain = timed(lambda: model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False))
    del model

    results = {"machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}", "tokens": n,
               "plain_generate_fp32_tok_s": n / plain}
    for label, dtype in (("fp32", torch.float32), ("chat_default", None)):
        engine = ChatEngine("embedded", "cpu", dtype)
        if args.run:
            from studio.runs import Run

            adapter = engine.attach_run(Run(Path(args.run)))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                base = load_base("embedded", "cpu", torch.float32)[0]
                lora = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, task_type="CAUSAL_LM",
                                                       target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                       "gate_proj", "up_proj", "down_proj"]))
                lora.save_pretrained(tmp)
                adapter = engine.attach(tmp, "bench")
        engine.model.generation_config.min_new_tokens = n

        def one():
            for _ in engine.stream([PROMPT], [None], settings):
                pass

        def pair():
            for _ in engine.stream_pair(PROMPT, PROMPT, adapter, settings):
                pass

        t_one, t_pair = timed(one), timed(pair)
        results[label] = {"dtype": str(engine.model.dtype).removeprefix("torch."), "one_answer_tok_s": n / t_one,
                          "one_answer_vs_plain_speed": plain / t_one, "pair_vs_one_answer_time": t_pair / t_one}
        del engine
    print(json.dumps(results, indent=2))
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "chat.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
