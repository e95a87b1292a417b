"""Memory of a DPO run, estimated from a model's config.json without loading its weights, and the run fitted to the card.

An estimate, and labelled so in the UI: weights (parameters x bytes per parameter), the adapter with its
gradients and Adam state, and the activations one DPO step keeps for chosen + rejected, calibrated on
peaks measured on an H200. `fit_to_card` picks the per-device batch, accumulation and checkpointing that
keep the preset's effective batch and fit the free GPU memory. Pure functions: nothing here imports torch
except `free_gpu_gb`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from .models import EMBEDDED_HUB_ID, embedded_folder, embedded_gguf, embedded_installed, embedded_source, is_embedded

GB = 1024**3
ADAPTER_BYTES = 16  # fp32 weight + gradient + two Adam moments per trainable parameter
QLORA_BYTES = 0.55  # nf4 is 0.5 byte per parameter, plus the double-quantised block constants


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool

    @classmethod
    def from_config(cls, c: dict) -> "Shape":
        c = c.get("text_config", c)  # multimodal configs nest the language model's
        hidden, heads = c["hidden_size"], c.get("num_attention_heads", 1)
        return cls(hidden, c["num_hidden_layers"], c.get("intermediate_size", 4 * hidden), c["vocab_size"], heads,
                   c.get("num_key_value_heads") or heads, c.get("head_dim") or hidden // heads,
                   bool(c.get("tie_word_embeddings", False)))

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each projection in one decoder layer (Llama / Mistral / Qwen layout)."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def params(self) -> int:
        per_layer = sum(a * b for a, b in self.module_shapes().values()) + 2 * self.hidden
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * per_layer + self.hidden

    def adapter_params(self, r: int, targets: list[str]) -> int:
        shapes = self.module_shapes()
        return self.layers * sum(r * sum(shapes[t]) for t in targets if t in shapes)


def model_shape(spec: str, wait: bool = True) -> Shape | None:
    """The shape of a model from its config.json: embedded, a local folder or a hub id already in the cache.

    With wait=False an embedded model not yet converted gives None until `warm_up()` has read its GGUF header.
    """
    try:
        if is_embedded(spec) and embedded_source() == "hub":
            spec = EMBEDDED_HUB_ID  # requirements.txt alone (a Space): the hub copy's config, once it is cached
        if is_embedded(spec):
            if wait or _embedded_shape.cache_info().currsize:
                return _embedded_shape()
            converted = embedded_folder() / "config.json"
            return Shape.from_config(json.loads(converted.read_text())) if converted.is_file() else None
        path = Path(spec).expanduser()
        if (path / "config.json").is_file():
            return Shape.from_config(json.loads((path / "config.json").read_text()))
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(spec, "config.json")
        if isinstance(cached, str):
            return Shape.from_config(json.loads(Path(cached).read_text()))
    except (KeyError, ValueError, OSError, TypeError):
        return None
    return None


def warm_up() -> None:
    """Read the embedded model's shape in the background: parsing the GGUF file takes seconds on a busy CPU."""
    if embedded_installed():  # without the package there is no GGUF to read (model_shape reads the hub cache)
        threading.Thread(target=_embedded_shape, name="embedded-shape", daemon=True).start()


@functools.cache
def _embedded_shape() -> Shape:
    if embedded_source() == "converted":
        return Shape.from_config(json.loads((embedded_folder() / "config.json").read_text()))
    from gguf import GGUFReader  # not converted yet: read the GGUF file instead (its weights stay on disk)

    fields = GGUFReader(str(embedded_gguf())).fields

    def value(key):
        field = fields[f"llama.{key}"]
        return int(field.parts[field.data[0]][0])

    return Shape(value("embedding_length"), value("block_count"), value("feed_forward_length"), value("vocab_size"),
                 value("attention.head_count"), value("attention.head_count_kv"),
                 value("embedding_length") // value("attention.head_count"), True)


def params_from_name(spec: str) -> float | None:
    """'TwinLlama-3.1-8B' -> 8e9: a last resort when no config.json is at hand (hub ids offline)."""
    found = re.findall(r"(\d+(?:\.\d+)?)\s*([MB])\b", spec.replace("_", "-"), flags=re.IGNORECASE)
    if not found:
        return None
    number, unit = found[-1]
    return float(number) * (1e9 if unit.upper() == "B" else 1e6)


# --- one DPO step's memory, calibrated on measured peaks ----------------------------------------
#
# Fitted to the peaks nvidia-smi showed on one H200 (../shared/gpu/README.md, 2026-11-28): random-weight
# SmolLM2 shapes, twin-style pairs (every batch padded to ~112 tokens), bf16, LoRA r 16 on all projections.
#   1.7B LoRA, 4 pairs a device, checkpointing on:   5493 MiB transformers+PEFT, 4831 MiB Unsloth
#   1.7B LoRA, 32 pairs a device, no checkpointing: 28457 MiB transformers+PEFT, 17465 MiB Unsloth
#   135M LoRA / QLoRA, 2 pairs, checkpointing on:    1521 / 1523 MiB transformers+PEFT, 1265 / 1181 MiB Unsloth
# A least-squares fit of three numbers per backend (overhead, per-layer tensors, bytes per vocab entry) to
# those figures; with the rounded constants below every figure lands within 6% (tests/test_memory.py).
# Other shapes and longer sequences are extrapolation: fit_to_card keeps a margin for that.

CUDA_OVERHEAD_GB = 0.65  # CUDA context, cuBLAS workspace, kernels and allocator slack (fitted: 0.62-0.66)


@dataclass(frozen=True)
class Activations:
    """What one DPO step keeps for backward, per token of the padded batch (chosen and rejected both count)."""

    layer_tensors: float  # hidden-sized bf16 tensors kept per layer without checkpointing
    vocab_bytes: float  # bytes per vocabulary entry: logits, their fp32 log-softmax and its gradient, TRL's stats
    keeps_checkpoints: bool  # with checkpointing, whether each layer's input stays on the GPU


ACTIVATIONS = {
    # PEFT casts each projection's input to fp32 for the adapter, so it keeps about twice what Unsloth does.
    "transformers": Activations(layer_tensors=22.0, vocab_bytes=28.0, keeps_checkpoints=True),
    # Unsloth's fused kernels keep less, and its checkpointing offloads the layer inputs to CPU RAM.
    "unsloth": Activations(layer_tensors=13.0, vocab_bytes=14.0, keeps_checkpoints=False),
}
BACKENDS = tuple(ACTIVATIONS)


@dataclass(frozen=True)
class Breakdown:
    """An estimate of one training step's peak memory, in GB (GiB), by where it goes."""

    overhead: float
    weights: float
    adapter: float
    activations: float

    @property
    def total(self) -> float:
        return self.overhead + self.weights + self.adapter + self.activations


def training_memory(shape: Shape, method: str, backend: str = "transformers", *, seq_len: int = 512,
                    pairs: int = 2, checkpointing: bool = False, lora_r: int = 16,
                    targets: list[str] | None = None, cuda: bool = True) -> Breakdown:
    """Peak memory of one DPO step: `pairs` preference pairs a device, each sequence padded to `seq_len` tokens.

    TRL pads a batch to its longest sequence, so `seq_len` is the longest prompt + answer the batches can
    hold: max_length, or less when the data is known to be shorter (see `planning_length`). The
    reference pass (adapter off, no gradients) keeps nothing. On CPU (cuda=False) everything is fp32.
    """
    if backend not in ACTIVATIONS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    linear = shape.layers * sum(a * b for a, b in shape.module_shapes().values())
    if method == "qlora":
        # nf4 for the projections; the rest (embeddings, norms) stays 16-bit, and PEFT's
        # prepare_model_for_kbit_training casts it to fp32.
        weights = linear * QLORA_BYTES + (shape.params - linear) * (4 if backend == "transformers" else 2)
    else:
        weights = shape.params * (2 if cuda else 4)
    adapter = shape.adapter_params(lora_r, targets or list(shape.module_shapes())) * ADAPTER_BYTES
    act = ACTIVATIONS[backend]
    hidden_bytes = shape.hidden * 2
    if checkpointing:  # one layer's tensors at a time, recomputed in backward, plus the kept layer inputs
        per_token = act.layer_tensors * hidden_bytes + (shape.layers * hidden_bytes if act.keeps_checkpoints else 0)
    else:
        per_token = shape.layers * act.layer_tensors * hidden_bytes
    per_token *= 1 if cuda else 2  # hidden states are bf16 on a GPU, fp32 on CPU
    per_token += shape.vocab * act.vocab_bytes  # the logits' copies are fp32 either way (TRL upcasts them)
    activations = 2 * pairs * seq_len * per_token
    return Breakdown(CUDA_OVERHEAD_GB if cuda else 0.0, weights / GB, adapter / GB, activations / GB)


TEMPLATE_TOKENS = 8  # what the chat template adds around an answer (<|im_end|>, newlines) beyond the counted text


def planning_length(max_length: int, token_stats: dict | None = None) -> int:
    """The longest sequence a batch can hold: max_length, or the data's longest pair when that is shorter.

    `token_stats` is the data report's "tokens" entry (studio.data: prompt + longer answer per pair, as
    "pair" with "max"). Planning for the data's real length instead of max_length lets a short-pair set
    like twin-style (110 tokens at most) use batches 4x larger under the usual max_length of 512.
    """
    longest = ((token_stats or {}).get("pair") or {}).get("max")
    return min(max_length, longest + TEMPLATE_TOKENS) if longest else max_length


# --- fitting a run to the card ----------------------------------------------------------------

# Kept free on top of the estimate: the fit is within 6% on the shapes it was measured on, but a new
# shape or a longer sequence is extrapolation, and PyTorch's caching allocator fragments when batches
# vary in length. 15% of a 141 GB card is ~21 GB; of an 8 GB card, 1.2 GB.
SAFETY_MARGIN = 0.15
# Checkpointing recomputes the forward pass in backward: ~30% more time a step. Measured on the H200,
# 8x the per-device batch (4 -> 32 pairs) gave 5.7x the tokens/s, ~1.6x per doubling even after the
# checkpointing it dropped: so checkpointing is worth it when it at least doubles the per-device batch.
CHECKPOINTING_PAYS_AT = 2


@dataclass(frozen=True)
class Fit:
    """What fit_to_card chose for one run, and why (recorded in the run's config.yaml)."""

    batch: int  # per_device_train_batch_size
    accumulation: int  # gradient_accumulation_steps
    checkpointing: bool  # gradient_checkpointing
    estimate_gb: float  # estimated peak for this choice
    free_gb: float  # free GPU memory it was fitted to
    fits: bool  # False: even the smallest choice is estimated over the free memory (it may still run)
    reason: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def settings(self) -> dict:
        """The RunConfig fields this fit sets."""
        return {"per_device_train_batch_size": self.batch, "gradient_accumulation_steps": self.accumulation,
                "gradient_checkpointing": self.checkpointing}


def fit_to_card(shape: Shape, method: str, backend: str, max_length: int, effective_batch: int, free_gb: float,
                explicit: dict | None = None, *, lora_r: int = 16, targets: list[str] | None = None) -> Fit:
    """Per-device batch, gradient accumulation and checkpointing for this card, keeping the recipe.

    The preset's effective batch (batch x accumulation) is the recipe and is kept exactly: the per-device
    batch is the largest divisor of it whose estimated peak fits in `free_gb` less SAFETY_MARGIN. No
    checkpointing when that fits; checkpointing only when it at least doubles the per-device batch
    (CHECKPOINTING_PAYS_AT). `explicit` holds the settings the user set themselves
    (per_device_train_batch_size, gradient_accumulation_steps, gradient_checkpointing): those win, and
    only the rest is chosen. `max_length`: the longest sequence a batch can hold (see planning_length).
    """
    explicit = {k: v for k, v in (explicit or {}).items() if v is not None}
    ex_batch = explicit.get("per_device_train_batch_size")
    ex_accum = explicit.get("gradient_accumulation_steps")
    ex_ckpt = explicit.get("gradient_checkpointing")
    effective = max(1, int(effective_batch))
    if ex_batch and ex_accum:
        options = [(int(ex_batch), int(ex_accum))]
    elif ex_batch:
        options = [(int(ex_batch), max(1, round(effective / ex_batch)))]
    elif ex_accum:
        options = [(max(1, effective // int(ex_accum)), int(ex_accum))]
    else:
        options = [(d, effective // d) for d in sorted(_divisors(effective), reverse=True)]
    usable = free_gb * (1 - SAFETY_MARGIN)

    def peak(batch: int, ckpt: bool) -> float:
        return training_memory(shape, method, backend, seq_len=max_length, pairs=batch, checkpointing=ckpt,
                               lora_r=lora_r, targets=targets).total

    def largest(ckpt: bool):
        return next(((b, a) for b, a in options if peak(b, ckpt) <= usable), None)

    ckpt_choices = [bool(ex_ckpt)] if "gradient_checkpointing" in explicit else [False, True]
    off = largest(False) if False in ckpt_choices else None
    on = largest(True) if True in ckpt_choices else None
    where = f"{free_gb:.1f} GB free less {SAFETY_MARGIN:.0%} margin = {usable:.1f} GB"
    set_by_user = [k for k in ("per_device_train_batch_size", "gradient_accumulation_steps", "gradient_checkpointing")
                   if k in explicit]
    kept = f"set by you: {', '.join(set_by_user)}; " if set_by_user else ""
    if off and (not on or on[0] < CHECKPOINTING_PAYS_AT * off[0]):
        (batch, accum), ckpt = off, False
        why = "checkpointing off (it costs ~30% time)"
        if on and on[0] > off[0]:
            why += f"; with it {on[0]} pairs would fit, less than {CHECKPOINTING_PAYS_AT}x as many"
    elif on:
        (batch, accum), ckpt = on, True
        why = (f"checkpointing on: it lets {on[0]} pairs a device fit instead of {off[0] if off else 'none'}"
               if False in ckpt_choices else "checkpointing on")
    else:  # nothing fits: the smallest choice, with checkpointing where allowed; the OOM retry is the backstop
        (batch, accum), ckpt = options[-1], (True in ckpt_choices)
        estimate = peak(batch, ckpt)
        return Fit(batch, accum, ckpt, round(estimate, 2), round(free_gb, 2), False,
                   f"{kept}even {batch} pair(s) a device is estimated at {estimate:.1f} GB, over the {where}: "
                   f"lower max_length, use method qlora, or a smaller model")
    estimate = peak(batch, ckpt)
    changed = "" if batch * accum == effective else f" (changed from the recipe's {effective} by your settings)"
    reason = (f"{kept}{batch} pair{'s' if batch != 1 else ''} a device x {accum} accumulation step(s) = effective batch {batch * accum}"
              f"{changed}; {why}; estimated {estimate:.1f} GB for sequences up to {max_length} tokens, "
              f"within the {where}")
    return Fit(batch, accum, ckpt, round(estimate, 2), round(free_gb, 2), True, reason)


SIZING_KEYS = ("per_device_train_batch_size", "gradient_accumulation_steps", "gradient_checkpointing")


def fit_run(cfg, backend: str, free_gb: float, token_stats: dict | None = None, explicit=()) -> tuple[object, Fit | None]:
    """A RunConfig fitted to the card: (cfg with batch, accumulation and checkpointing set, the Fit), or
    (cfg unchanged, None) when the model's shape is unknown (no config.json at hand).

    `cfg`: the run's config as the user asked for it (gradient_checkpointing None = not set). `explicit`:
    names of the SIZING_KEYS the user set themselves (a preset's values are the recipe, not explicit);
    a non-None gradient_checkpointing counts as explicit too. `token_stats`: the data report's "tokens".
    """
    shape = model_shape(cfg.model)
    if shape is None:
        return cfg, None
    chosen = {k: getattr(cfg, k) for k in SIZING_KEYS if k in set(explicit)}
    if cfg.gradient_checkpointing is not None:
        chosen["gradient_checkpointing"] = cfg.gradient_checkpointing
    fit = fit_to_card(shape, cfg.method, backend, planning_length(cfg.max_length, token_stats),
                      cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps, free_gb, chosen,
                      lora_r=cfg.lora_r, targets=list(cfg.lora_target_modules))
    return cfg.replace(**fit.settings()), fit


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def halve_batch(batch: int, accumulation: int) -> tuple[int, int] | None:
    """After a CUDA out-of-memory error: half the per-device batch, twice the accumulation (None at batch 1).

    The effective batch stays the same when the batch is even; an odd batch rounds down and accumulation
    rounds up, so the effective batch never shrinks.
    """
    if batch <= 1:
        return None
    half = batch // 2
    return half, -(-batch * accumulation // half)


def free_gpu_gb(device: int = 0) -> float | None:
    """Free memory on the GPU now, in GB (None without CUDA). Imports torch: call it where training will run."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return free / GB


@dataclass
class Estimate:
    params: float
    lora_gb: float
    qlora_gb: float
    source: str  # where the parameter count came from


def estimate(spec: str, *, lora_r: int = 16, targets: list[str] | None = None, batch: int = 2,
             max_length: int = 512, cuda: bool = False, checkpointing: bool | None = None,
             backend: str = "transformers", wait: bool = True) -> Estimate | None:
    """LoRA and QLoRA estimates for a model spec (see training_memory), from its config or, failing that, its name."""
    shape = model_shape(spec, wait=wait)
    if shape is None:
        params = params_from_name(spec)
        if params is None:
            return None
        hidden = 4096 if params > 3e9 else 2048  # a typical width for the size, for the activation term
        shape = Shape(hidden, max(1, round(params / (12 * hidden * hidden))), int(hidden * 3.5), 128_000,
                      hidden // 128, hidden // 128, 128, False)
        params_count, source = params, "from the model name"
    else:
        params_count, source = shape.params, "from the model config"
    checkpointing = cuda if checkpointing is None else checkpointing  # the engine's default: on where memory is short
    common = dict(seq_len=max_length, pairs=batch, checkpointing=checkpointing, lora_r=lora_r, targets=targets)
    lora = training_memory(shape, "lora", backend, cuda=cuda, **common).total
    qlora = training_memory(shape, "qlora", backend, cuda=True, **common).total  # QLoRA runs on CUDA only
    return Estimate(params_count, lora, qlora, source)


def describe(spec: str, method: str, qlora_problem: str | None, *, free_gb: float | None = None,
             accumulation: int = 1, explicit: dict | None = None, **shape_args) -> str:
    """The Markdown under the LoRA / QLoRA choice: the trade-off, both estimates, QLoRA's availability and,
    on a GPU with `free_gb` given, what fit_to_card would choose for this card (`batch` x `accumulation` is
    the recipe's effective batch; `explicit`: the settings the user set, which win)."""
    lines = ["**LoRA** trains a small adapter on full-precision base weights: faster and exact, needs more memory. "
             "**QLoRA** stores the base in 4-bit (NF4): about a quarter of the weight memory, a little slower, CUDA only."]
    est = estimate(spec, wait=False, **shape_args)
    shape = model_shape(spec, wait=False) if est is not None and free_gb is not None and shape_args.get("cuda") else None
    if shape is not None:
        fit = fit_to_card(shape, method, shape_args.get("backend", "transformers"), shape_args.get("max_length", 512),
                          shape_args.get("batch", 2) * max(1, accumulation), free_gb, explicit,
                          lora_r=shape_args.get("lora_r", 16), targets=shape_args.get("targets"))
        lines.append(describe_fit(fit))
    if est is None and is_embedded(spec):
        lines.append("Memory estimate: reading the embedded model's shape…")
    elif est is None:
        lines.append(f"Memory: no estimate for `{spec}` (its config.json is not available offline).")
    else:
        where = "GPU" if shape_args.get("cuda") else "RAM"
        lora = f"LoRA ≈ **{est.lora_gb:.1f} GB**" if method == "lora" else f"LoRA ≈ {est.lora_gb:.1f} GB"
        qlora = f"QLoRA ≈ **{est.qlora_gb:.1f} GB**" if method == "qlora" else f"QLoRA ≈ {est.qlora_gb:.1f} GB"
        lines.append(f"Estimated {where} for training ({_count(est.params)} parameters, {est.source}; "
                     f"weights + adapter + activations, a rough estimate): {lora} · {qlora}")
    if qlora_problem:
        lines.append(f"⚠️ QLoRA is unavailable here: {qlora_problem}")
    return "\n\n".join(lines)


def describe_fit(fit: Fit) -> str:
    """One Markdown line for the Train tab: what the run will use on this card, and why."""
    head = (f"**Fitted to this GPU:** {fit.batch} pairs a device x {fit.accumulation} accumulation, checkpointing "
            f"{'on' if fit.checkpointing else 'off'}, ≈ {fit.estimate_gb:.1f} GB of {fit.free_gb:.1f} GB free")
    return f"{head}. {fit.reason[0].upper()}{fit.reason[1:]}." if fit.fits else f"⚠️ {head}: {fit.reason}."


def _count(params: float) -> str:
    return f"{params / 1e9:.1f}B" if params >= 1e9 else f"{params / 1e6:.0f}M"
