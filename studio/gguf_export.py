"""Write a merged Llama-family model as a GGUF file for llama.cpp / Ollama, and the Ollama Modelfile beside it.

Built on the `gguf` package (the writer, tensor-name maps and quantizers that llama.cpp's own
convert_hf_to_gguf.py uses), following that script's LlamaModel conversion: Q/K rows permuted to
llama.cpp's rotary layout, 1-D tensors kept in F32, a gpt2-style BPE vocabulary with its merges,
special token ids and chat template.

    from studio.gguf_export import check_architecture, check_tokenizer, modelfile_text, write_gguf
    check_architecture(config_dict)              # refuses a family it cannot convert, naming it
    pre = check_tokenizer(tokenizer)             # ... and a tokenizer llama.cpp would split differently
    write_gguf(model, tokenizer, tokenizer_dir, Path("model-f16.gguf"), "f16", pre)
    text, notes = modelfile_text(tokenizer, "model-f16.gguf")
"""

from __future__ import annotations

import json
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path

from .errors import ModelError
from .generation import DEFAULTS

QUANTS = ("f16", "q8_0")
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)

# llama.cpp tells BPE pre-tokenizers apart by hashing the ids of this text (convert_hf_to_gguf.py,
# get_vocab_base_pre); the same text and hashes here, for the Llama-family tokenizers we convert.
_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM / SmolLM2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
}

Progress = Callable[[str, int, int | None], None] | None


def check_architecture(config: dict) -> None:
    """A ModelError naming what is not covered, before any weights are loaded (config.json as a dict)."""
    archs = config.get("architectures") or [config.get("model_type", "?")]
    arch = archs[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelError(
            f"GGUF export covers {', '.join(SUPPORTED_ARCHITECTURES)} (the Llama family, e.g. SmolLM2, Llama 3); "
            f"this model is {arch}. Export it as 'merged' and convert that folder with llama.cpp's "
            f"convert_hf_to_gguf.py, which covers more families."
        )
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type != "default":
        raise ModelError(
            f"GGUF export covers Llama models with plain rotary embeddings; this one uses rope_type {rope_type!r} "
            f"(its scaling factors are not written yet). Export it as 'merged' and convert it with llama.cpp."
        )
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise ModelError("GGUF export covers Llama models without bias terms; this one has attention or MLP biases.")


def check_tokenizer(tokenizer) -> str:
    """The llama.cpp pre-tokenizer name for this tokenizer, or a ModelError naming what is not covered."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    kind = (spec.get("model") or {}).get("type", type(tokenizer).__name__)
    if kind != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise ModelError(
            f"GGUF export covers byte-level BPE tokenizers (gpt2 style: SmolLM2, Llama 3); this model's tokenizer is "
            f"{kind} without byte-level pre-tokenization (SentencePiece-style vocabularies, as in Llama 2, are not "
            f"covered yet)."
        )
    digest = sha256(str(tokenizer.encode(_CHKTXT, add_special_tokens=False)).encode()).hexdigest()
    if digest not in PRE_TOKENIZERS:
        raise ModelError(
            f"GGUF export does not know this tokenizer's pre-tokenizer (hash {digest[:12]}…); known: "
            f"{', '.join(sorted(set(PRE_TOKENIZERS.values())))}. llama.cpp would split its text differently from "
            f"transformers, so no GGUF was written."
        )
    return PRE_TOKENIZERS[digest]


def write_gguf(model, tokenizer, tokenizer_dir: Path, path: Path, quant: str, pre: str, name: str = "",
               license: str | None = None, base: dict | None = None, progress: Progress = None,
               should_stop: Callable[[], bool] | None = None) -> dict | None:
    """Write `model` (a merged LlamaForCausalLM) to `path`. Returns a summary, or None when stopped."""
    import gguf
    import torch

    if quant not in QUANTS:
        raise ModelError(f"GGUF quantization {quant!r} is not offered; choose one of {', '.join(QUANTS)}.")
    hp = model.config.to_dict()
    n_head, n_kv = hp["num_attention_heads"], hp.get("num_key_value_heads") or hp["num_attention_heads"]
    n_layer = hp["num_hidden_layers"]
    head_dim = hp.get("head_dim") or hp["hidden_size"] // n_head
    rope = hp.get("rope_parameters") or {}
    rope_theta = rope.get("rope_theta", hp.get("rope_theta", 10000.0))
    qtype = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[quant]
    ftype = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]

    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.MODEL)
    if name:
        writer.add_name(name)
    if license:
        writer.add_license(license)
    base = base or {}
    if base.get("basename"):
        writer.add_basename(base["basename"])
    if base.get("finetune"):
        writer.add_finetune(base["finetune"])
    if base.get("base_name"):  # the model it was tuned from, as llama.cpp's converter records it
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, base["base_name"])
        if base.get("base_organization"):
            writer.add_base_model_organization(0, base["base_organization"])
        if base.get("base_repo_url"):
            writer.add_base_model_repo_url(0, base["base_repo_url"])
    writer.add_context_length(hp["max_position_embeddings"])
    writer.add_embedding_length(hp["hidden_size"])
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(hp["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    writer.add_file_type(ftype)
    writer.add_vocab_size(hp["vocab_size"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_vocab(writer, tokenizer, tokenizer_dir, hp["vocab_size"], pre)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    state = model.state_dict()
    tied = bool(hp.get("tie_word_embeddings"))
    todo = [k for k in state if not k.endswith("rotary_emb.inv_freq") and not (tied and k == "lm_head.weight")]
    types: dict[str, int] = {}
    for i, key in enumerate(todo):
        if should_stop and should_stop():
            writer.close()
            return None
        target = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ModelError(f"GGUF export cannot place tensor {key!r} of this model in llama.cpp's Llama layout.")
        data = state[key].detach().to(torch.float32)
        # llama.cpp applies rotary embeddings to interleaved pairs; HF checkpoints keep the two halves apart.
        if key.endswith("q_proj.weight"):
            data = _permute(data, n_head, n_head)
        elif key.endswith("k_proj.weight"):
            data = _permute(data, n_head, n_kv)
        array = data.numpy()
        # As in llama.cpp: 1-D tensors and norms stay F32 (its kernels expect them so).
        kind = gguf.GGMLQuantizationType.F32 if array.ndim <= 1 or target.endswith("_norm.weight") else qtype
        try:
            array = gguf.quants.quantize(array, kind)
        except gguf.QuantError:  # rows not a multiple of the block size: F16, as llama.cpp falls back
            kind = gguf.GGMLQuantizationType.F16
            array = gguf.quants.quantize(data.numpy(), kind)
        writer.add_tensor(target, array, raw_dtype=kind)
        types[kind.name] = types.get(kind.name, 0) + 1
        if progress:
            progress("converting tensors", i + 1, len(todo))
    if progress:
        progress("writing the GGUF file", 0, None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"tensors": len(todo), "tensor_types": types, "pre_tokenizer": pre, "tied_output": tied}


def _permute(weights, n_head: int, n_head_kv: int):
    """llama.cpp's LlamaModel.permute: HF's rotate-half row order -> interleaved pairs, per head."""
    if n_head_kv != n_head:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def _add_vocab(writer, tokenizer, tokenizer_dir: Path, vocab_size: int, pre: str) -> None:
    """gpt2-style vocabulary as llama.cpp's _set_vocab_gpt2 writes it, merges and special ids from the files."""
    import gguf

    reverse = {i: tok for tok, i in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    specials = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif reverse[i] in added:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.CONTROL if i in specials else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    config_file = tokenizer_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    if isinstance(tokenizer_config.get("add_prefix_space"), bool):  # as llama.cpp's LlamaModel.set_vocab does
        writer.add_add_space_prefix(tokenizer_config["add_prefix_space"])
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True)
    if not special.merges:
        raise ModelError(f"No BPE merges found in {tokenizer_dir / 'tokenizer.json'}; a GGUF without them cannot tokenize.")
    # Whether the tokenizer puts BOS in front, read from what it does rather than from config flags.
    probe = tokenizer("a")["input_ids"]
    special.add_special_token["bos"] = bool(probe) and probe[0] == tokenizer.bos_token_id
    special.add_to_gguf(writer, quiet=True)


# --- Ollama ---------------------------------------------------------------------------------

_CHATML_TEMPLATE = (
    '{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
    '{{ range .Messages }}{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n<|im_start|>assistant\n'
    '{{ else if eq .Role "assistant" }}{{ .Content }}<|im_end|>\n{{ end }}{{ end }}'
)


def ollama_template(tokenizer) -> dict:
    """The chat template in Ollama's Go-template form: {"template", "system", "stop"}; template None if unknown.

    Recognised by what the Jinja template renders, not by its text: a ChatML conversation with or without a
    default system message (SmolLM2 adds one when the conversation has none, which Ollama's SYSTEM does too).
    """
    def render(messages):
        try:
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception:  # noqa: BLE001 - a template that cannot render these is simply not ChatML
            return None

    def chatml(pairs):
        return "".join(f"<|im_start|>{r}\n{c}<|im_end|>\n" for r, c in pairs) + "<|im_start|>assistant\n"

    stops = [t for t in (tokenizer.eos_token,) if t]
    conversation = [("system", "S"), ("user", "U"), ("assistant", "A"), ("user", "V")]
    if render([{"role": r, "content": c} for r, c in conversation]) != chatml(conversation):
        return {"template": None, "system": None, "stop": stops}
    stops = list(dict.fromkeys([*stops, "<|im_start|>", "<|im_end|>"]))
    bare = render([{"role": "user", "content": "U"}])
    system = None
    if bare != chatml([("user", "U")]):
        head, sep, _ = (bare or "").partition("<|im_end|>\n<|im_start|>user\nU<|im_end|>\n")
        if not sep or not head.startswith("<|im_start|>system\n"):
            return {"template": None, "system": None, "stop": stops}
        system = head.removeprefix("<|im_start|>system\n")
    return {"template": _CHATML_TEMPLATE, "system": system, "stop": stops}


def modelfile_text(tokenizer, gguf_name: str, context: int | None = None, license: str | None = None,
                   sampling=None) -> tuple[str, list[str]]:
    """The Modelfile for a GGUF beside it, and notes on what it could not carry.

    `sampling` (a GenerationSettings; default the chat tab's) becomes PARAMETER lines, so Ollama answers as the
    studio showed: greedy (temperature 0) unless the studio sampled. Without them Ollama samples at its own defaults.
    """
    sampling = sampling or DEFAULTS["chat_tab"]
    t = ollama_template(tokenizer)
    lines = ["# Ollama Modelfile written by DPO Studio. Use: ollama create NAME -f Modelfile", f"FROM ./{gguf_name}"]
    notes = []
    if t["template"] is not None:
        lines.append(f'TEMPLATE """{t["template"]}"""')
    else:
        notes.append("The chat template is not ChatML, so the Modelfile has no TEMPLATE: Ollama falls back to "
                     "the GGUF's tokenizer.chat_template metadata; check it with `ollama show --modelfile`.")
    if t["system"]:
        lines.append(f'SYSTEM """{t["system"]}"""')
    for stop in t["stop"]:
        lines.append(f'PARAMETER stop "{stop}"')
    lines.append(f"PARAMETER temperature {sampling.temperature:g}")
    lines.append(f"PARAMETER top_p {sampling.top_p:g}")
    lines.append(f"PARAMETER seed {sampling.seed}")
    # Ollama looks back 64 tokens for the penalty by default; transformers, as the studio runs it, over the whole text.
    lines.append(f"PARAMETER repeat_penalty {sampling.repetition_penalty:g}")
    lines.append("PARAMETER repeat_last_n -1")
    lines.append(f"PARAMETER num_predict {sampling.max_new_tokens}")
    if context:
        lines.append(f"PARAMETER num_ctx {int(context)}")
    if license:
        lines.append(f'LICENSE """{license}"""')
    else:
        notes.append("The base model's licence is not known here, so the Modelfile has no LICENSE line.")
    return "\n".join(lines) + "\n", notes
