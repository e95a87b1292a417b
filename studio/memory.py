"""Rough memory estimates for LoRA and QLoRA, read from a model's config.json without loading its weights.

Only an estimate, and labelled so in the UI: weights (parameters × bytes per parameter), the adapter with its
gradients and Adam state, and the activations one DPO step keeps for chosen + rejected.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

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
        if _is_embedded(spec):
            if wait or _embedded_shape.cache_info().currsize:
                return _embedded_shape()
            converted = _converted_config()
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


def _is_embedded(spec: str) -> bool:
    from studio.models import is_embedded

    return is_embedded(spec)


def _converted_config() -> Path:
    from studio.config import studio_home
    from studio.models import EMBEDDED_NAME

    return studio_home() / "models" / EMBEDDED_NAME / "config.json"


def warm_up() -> None:
    """Read the embedded model's shape in the background: parsing the GGUF file takes seconds on a busy CPU."""
    threading.Thread(target=_embedded_shape, name="embedded-shape", daemon=True).start()


@functools.cache
def _embedded_shape() -> Shape:
    from studio.models import embedded_gguf

    converted = _converted_config()
    if converted.is_file():
        return Shape.from_config(json.loads(converted.read_text()))
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


@dataclass
class Estimate:
    params: float
    lora_gb: float
    qlora_gb: float
    source: str  # where the parameter count came from


def estimate(spec: str, *, lora_r: int = 16, targets: list[str] | None = None, batch: int = 2,
             max_length: int = 512, cuda: bool = False, checkpointing: bool | None = None,
             wait: bool = True) -> Estimate | None:
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
    adapter = shape.adapter_params(lora_r, targets or list(shape.module_shapes())) * ADAPTER_BYTES
    sequences = 2 * batch  # chosen and rejected
    compute_bytes = 2 if cuda else 4  # bf16 on a GPU, fp32 on CPU
    checkpointing = cuda if checkpointing is None else checkpointing  # the engine's default: on where memory is short

    def activations(bytes_: int) -> float:
        # Per token and layer a transformer keeps ~18 hidden-sized tensors for backward (with checkpointing: one
        # per layer, plus one layer recomputed); the logits and their log-softmax are vocab-sized.
        # The reference pass (adapter off) keeps nothing.
        per_layer = shape.layers + 18 if checkpointing else shape.layers * 18
        return sequences * max_length * (per_layer * shape.hidden + shape.vocab * 2) * bytes_

    lora = params_count * compute_bytes + adapter + activations(compute_bytes)
    qlora = params_count * QLORA_BYTES + adapter + activations(2)  # QLoRA computes in bf16
    return Estimate(params_count, lora / GB, qlora / GB, source)


def describe(spec: str, method: str, qlora_problem: str | None, **shape_args) -> str:
    """The Markdown under the LoRA / QLoRA choice: the trade-off, both estimates, and QLoRA's availability."""
    lines = ["**LoRA** trains a small adapter on full-precision base weights: faster and exact, needs more memory. "
             "**QLoRA** stores the base in 4-bit (NF4): about a quarter of the weight memory, a little slower, CUDA only."]
    est = estimate(spec, wait=False, **shape_args)
    if est is None and _is_embedded(spec):
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


def _count(params: float) -> str:
    return f"{params / 1e9:.1f}B" if params >= 1e9 else f"{params / 1e6:.0f}M"
