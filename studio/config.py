"""One typed run configuration, declared once, validated once, plus presets and hardware-aware defaults.

Each `RunConfig` field is declared with `setting(...)`: its default, one line of help, its group and
label in the form, its choices or bounds, and whether it is passed to TRL's `DPOConfig` (`trl=True`)
or to PEFT's `LoraConfig` (`lora="<peft name>"`). The web form, the CLI's `settings` listing, the
sweepable settings and the trainer's config all read that metadata, so adding a TRL DPO option is one
line here. A preset is a flat YAML file whose keys are these fields (and an optional `card`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PRESETS_DIR = ROOT / "presets"

METHODS = ("lora", "qlora")
BACKENDS = ("auto", "transformers", "unsloth")
PROMPT_TEMPLATES = ("chat", "alpaca")
# What a run optimises. dpo: pairs against the frozen base (TRL's DPOTrainer); kto: one answer at a time with a
# thumbs up or down (KTOTrainer); orpo and simpo: pairs with no reference model (ORPOTrainer; CPOTrainer with
# loss_type simpo and no NLL term). studio.objectives holds what differs between them.
OBJECTIVES = ("dpo", "kto", "orpo", "simpo")
EIGHT_BIT_OPTIMS = ("adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "lion_8bit", "paged_lion_8bit")
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GROUPS = ("Model", "Data", "LoRA", "Objective", "Optimisation", "Hardware")


def positive_env(key: str, default: float, error: type[Exception] = ConfigError) -> float:
    """A positive, finite number from the environment variable `key` (default when unset); `error` names a bad one."""
    raw = os.environ.get(key, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise error(f"{key} must be a positive number, got {raw!r}.")
    return value


def studio_home() -> Path:
    """Where runs, uploads, pools and the model cache live."""
    return Path(os.environ.get("STUDIO_HOME", "studio_home")).resolve()


# The choices TRL and transformers accept, as the pinned versions list them (trl 1.14.0: DPOConfig's loss_type
# help text; transformers 5.17.0: SchedulerType, OptimizerNames). Declared rather than read at import: reading
# them imports trl and transformers' training_args, ~6 s of CPU in every CLI process and app start that never
# trains. tests/test_config.py compares them with the installed libraries, so a pin bump that changes a list fails.
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
              "warmup_stable_decay", "greedy")
COMMON_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adamw_8bit", "paged_adamw_8bit")
# The usual ones first, then the rest of OptimizerNames in alphabetical order.
OPTIMIZERS = COMMON_OPTIMIZERS + (
    "adagrad", "adalomo", "adamw_anyprecision", "adamw_bnb_8bit", "adamw_torch_4bit", "adamw_torch_8bit",
    "adamw_torch_npu_fused", "adamw_torch_xla", "ademamix", "ademamix_8bit", "apollo_adamw", "apollo_adamw_layerwise",
    "galore_adafactor", "galore_adafactor_layerwise", "galore_adamw", "galore_adamw_8bit",
    "galore_adamw_8bit_layerwise", "galore_adamw_layerwise", "grokadamw", "lion_32bit", "lion_8bit", "lomo",
    "paged_adamw_32bit", "paged_ademamix_32bit", "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit",
    "rmsprop", "rmsprop_bnb", "rmsprop_bnb_32bit", "rmsprop_bnb_8bit", "schedule_free_adamw", "schedule_free_radam",
    "schedule_free_sgd", "stable_adamw")


def setting(default, help: str, group: str, label: str | None = None, *, choices=None, gt=None, ge=None,
            lt=None, le=None, hint: str | None = None, trl: bool | str = False, lora: str | None = None,
            sweep: list | None = None, advanced: bool = False, custom: bool = False, objectives: tuple | None = None):
    """A RunConfig field with everything the form, the CLI, sweeps and the trainer need to know about it.

    `choices` is a tuple of the accepted values; `gt/ge/lt/le` bound numbers;
    `hint` says why the bound is there; `sweep` suggests values to try in a sweep (None: not sweepable);
    `custom` lets a choice field take other values (the form shows the choices as suggestions).
    `trl`: True passes the field to the trainer's config under its own name, a string under that TRL name
    (ORPO's and SimPO's beta are `beta` in their configs); `objectives` limits a field to the objectives it
    belongs to (None: every objective): only those receive it, and the form shows it only for them.
    """
    meta = {"help": help, "group": group, "label": label, "choices": choices, "gt": gt, "ge": ge, "lt": lt,
            "le": le, "hint": hint, "trl": trl, "lora": lora, "sweep": sweep, "advanced": advanced, "custom": custom,
            "objectives": objectives}
    if callable(default) or isinstance(default, list):
        factory = default if callable(default) else (lambda d=default: list(d))
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    # --- model ---
    model: str = setting("embedded", "embedded = SmolLM2-135M-Instruct (no download); or a hub id or a local model folder",
                         "Model", "Base model")
    method: str = setting("lora", "lora: 16/32-bit base + adapter; qlora: 4-bit base (CUDA only) + adapter", "Model",
                          "Method", choices=METHODS)
    backend: str = setting("auto", "auto: Unsloth on CUDA where installed and worth its compile time, else transformers+PEFT",
                           "Model", "Backend", choices=BACKENDS, advanced=True)
    init_adapter: str | None = setting(None, "continue training this run's adapter (a run id) instead of a fresh one",
                                       "Model", "Continue from run", advanced=True)
    round: int = setting(0, "preference-loop round this run belongs to (0 = trained on given data)", "Model",
                         "Round", ge=0, le=1000, advanced=True)

    # --- data ---
    data: str = setting("", "a JSONL / JSON / CSV / Parquet file, or a hub dataset id", "Data", "Training data")
    eval_data: str | None = setting(None, "a held-out file; empty: hold out the eval fraction of the training data",
                                    "Data", "Held-out data")
    prompt_col: str | None = setting(None, "the column holding the prompt, for layouts that are not detected", "Data",
                                     "prompt column", advanced=True)
    chosen_col: str | None = setting(None, "the column holding the chosen answer", "Data", "chosen column", advanced=True)
    rejected_col: str | None = setting(None, "the column holding the rejected answer", "Data", "rejected column",
                                       advanced=True)
    system_col: str | None = setting(None, "the column holding a system message", "Data", "system column", advanced=True)
    prompt_template: str = setting("chat", "chat: the tokenizer's chat template; alpaca: the Handbook's instruction template",
                                   "Data", "Prompt template", choices=PROMPT_TEMPLATES)
    eval_fraction: float = setting(0.05, "share of the data held out for evaluation (the Handbook holds out 5%)", "Data",
                                   "Eval fraction", ge=0, lt=1)
    eval_steps: int = setting(20, "evaluate every N optimizer steps (0 = only at the end)", "Data", "Eval every N steps",
                              ge=0, le=10**6)

    # --- LoRA ---
    lora_r: int = setting(16, "adapter rank: capacity of the update", "LoRA", "LoRA rank r", gt=0, le=1024,
                          lora="r", sweep=[4, 8, 16, 32])
    lora_alpha: int = setting(32, "alpha / r scales the update; alpha = 2r is the common starting point", "LoRA",
                              "LoRA alpha", gt=0, le=8192, lora="lora_alpha", sweep=[8, 16, 32, 64])
    lora_dropout: float = setting(0.0, "DPO is short and light; dropout only adds noise to the implicit reward", "LoRA",
                                  "LoRA dropout", ge=0, lt=1, lora="lora_dropout", sweep=[0.0, 0.05, 0.1])
    lora_target_modules: list[str] = setting(ALL_PROJECTIONS, "the linear layers that get an adapter", "LoRA",
                                             "Target modules", choices=tuple(ALL_PROJECTIONS), custom=True,
                                             lora="target_modules")

    # --- objective ---
    objective: str = setting("dpo", "dpo: pairs against the frozen base model; kto: single answers with a thumbs up or "
                             "down (a pair counts as one of each); orpo and simpo: pairs with no reference model "
                             "(no reference pass: faster, less memory)", "Objective", "Objective", choices=OBJECTIVES,
                             sweep=list(OBJECTIVES))
    beta: float = setting(0.1, "higher keeps the policy closer to the reference model", "Objective", "beta", gt=0, le=100,
                          trl=True, sweep=[0.05, 0.1, 0.2, 0.5], objectives=("dpo", "kto"))
    loss_type: list[str] = setting(["sigmoid"], "sigmoid = the original DPO loss; several are summed with loss_weights "
                                   "(sigmoid + sft adds an NLL term on the chosen answer, the RPO recipe, against "
                                   "answers that fall apart)", "Objective", "Loss type", choices=LOSS_TYPES, trl=True,
                                   sweep=[["sigmoid"], ["ipo"], ["sigmoid", "sft"]], objectives=("dpo",))
    loss_weights: list[float] | None = setting(None, "one weight per loss type (empty: 1 each)", "Objective",
                                               "Loss weights", trl=True, objectives=("dpo",))
    ld_alpha: float | None = setting(None, "length-desensitised DPO: < 1 down-weights the tokens past the shorter "
                                     "answer's length, against drifting to verbose answers (empty: off)", "Objective",
                                     "LD-DPO alpha", ge=0, le=1, trl=True, advanced=True, objectives=("dpo",))
    label_smoothing: float = setting(0.0, "for loss robust: the share of labels assumed flipped, against noisy pairs",
                                     "Objective", "Label smoothing", ge=0, lt=0.5, trl=True, advanced=True,
                                     objectives=("dpo",))
    desirable_weight: float = setting(1.0, "KTO: weight of the thumbs-up answers' loss; raise it when they are "
                                      "fewer than the thumbs-down ones (KTO paper: keep weight x count about equal)",
                                      "Objective", "Desirable weight", gt=0, le=100, trl=True, objectives=("kto",),
                                      sweep=[0.5, 1.0, 1.33])
    undesirable_weight: float = setting(1.0, "KTO: weight of the thumbs-down answers' loss", "Objective",
                                        "Undesirable weight", gt=0, le=100, trl=True, objectives=("kto",),
                                        sweep=[0.5, 1.0, 1.33])
    orpo_beta: float = setting(0.1, "ORPO: weight of the odds-ratio term beside the NLL on the chosen answer "
                               "(the paper's lambda)", "Objective", "ORPO beta", gt=0, le=100, trl="beta",
                               objectives=("orpo",), sweep=[0.05, 0.1, 0.25, 0.5])
    simpo_beta: float = setting(2.0, "SimPO: scale of the length-normalised reward (the paper uses 2 to 2.5)",
                                "Objective", "SimPO beta", gt=0, le=100, trl="beta", objectives=("simpo",),
                                sweep=[1.0, 2.0, 2.5])
    simpo_gamma: float = setting(1.0, "SimPO: the reward margin the chosen answer must win by (the paper: about "
                                 "half of beta)", "Objective", "SimPO gamma", ge=0, le=100, trl=True,
                                 objectives=("simpo",), sweep=[0.5, 1.0, 1.4])
    max_length: int = setting(512, "prompt + answer tokens; longer pairs are cut from the end", "Objective",
                              "Max length (tokens)", ge=16, le=131072, hint="to hold a prompt and an answer",
                              trl=True, sweep=[128, 256, 512])

    # --- optimisation ---
    learning_rate: float = setting(5e-6, "DPO wants a light touch: the Handbook uses 2e-6 on 8B", "Optimisation",
                                   "Learning rate", gt=0, lt=1e-2,
                                   hint="far too high for DPO at 1e-2 and above: use something in 1e-7 .. 1e-3",
                                   trl=True, sweep=[1e-5, 5e-5, 1e-4, 2e-4, 3e-4])
    lr_scheduler_type: str = setting("linear", "how the learning rate moves over the run", "Optimisation", "Scheduler",
                                     choices=SCHEDULERS, trl=True)
    warmup_steps: int = setting(0, "steps of linear warm-up from 0", "Optimisation", "Warmup steps", ge=0, le=10**6,
                                trl=True, sweep=[0, 4, 10])
    num_train_epochs: float = setting(1.0, "passes over the data (the Handbook: one)", "Optimisation", "Epochs", gt=0,
                                      le=1000, trl=True, sweep=[1, 2, 3])
    max_steps: int = setting(-1, "-1 = use epochs; > 0 stops after N optimizer steps", "Optimisation", "Max steps",
                             ge=-1, le=10**7, trl=True, sweep=[10, 20, 40, 80])
    per_device_train_batch_size: int = setting(2, "pairs per step on each device", "Optimisation", "Batch size (pairs)",
                                               gt=0, le=4096, trl=True, sweep=[1, 2, 4])
    gradient_accumulation_steps: int = setting(1, "batches summed into one optimizer step", "Optimisation",
                                               "Gradient accumulation", gt=0, le=4096, trl=True, sweep=[1, 2, 4])
    weight_decay: float = setting(0.0, "L2 pull of the adapter towards zero", "Optimisation", "Weight decay", ge=0, le=10,
                                  trl=True, advanced=True, sweep=[0.0, 0.01])
    optim: str | None = setting(None, "empty: adamw_8bit with CUDA + bitsandbytes, else adamw_torch", "Optimisation",
                                "Optimizer", choices=OPTIMIZERS, trl=True, advanced=True)
    seed: int = setting(0, "seeds the adapter's initialisation, the data order and the held-out split", "Optimisation",
                        "Seed", ge=0, le=2**32 - 1, trl=True, sweep=[0, 1, 2])
    logging_steps: int = setting(1, "log every N steps (1: the charts move every step)", "Optimisation",
                                 "Log every N steps", ge=1, le=10**6, trl=True, advanced=True)
    save_steps: int = setting(25, "snapshot the adapter every N steps so a crash loses little (0 = only at the end)",
                              "Optimisation", "Save adapter every N steps", ge=0, le=10**6, advanced=True)

    # --- hardware (None = chosen by hardware, see resolve_for_hardware) ---
    bf16: bool | None = setting(None, "empty: bf16 on a GPU that has it; on CPU autocast made a DPO step ~19x slower here",
                                "Hardware", "bf16", trl=True, advanced=True)
    gradient_checkpointing: bool | None = setting(None, "empty: chosen from the memory the run needs; saves memory, "
                                                  "costs ~30% time", "Hardware", "Gradient checkpointing", trl=True,
                                                  advanced=True)

    def __post_init__(self):
        for f in dataclasses.fields(self):  # values from code, YAML, --set or a form all arrive typed
            setattr(self, f.name, coerce(f.name, getattr(self, f.name), type(self)))
        problems = list(_problems(self))
        if problems:  # one line, so the CLI's "error: …" and the web app's warning say it whole
            raise ConfigError(("Invalid setting: " if len(problems) == 1 else "Invalid settings: ") + "; ".join(problems))

    # --- conversions ---
    @classmethod
    def from_dict(cls, values: dict, origin: str = "config") -> "RunConfig":
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"Unknown key(s) in {origin}: {', '.join(unknown)}. Known keys: {', '.join(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "RunConfig":
        return type(self).from_dict({**self.to_dict(), **changes})

    def trl_kwargs(self, objective: str | None = None) -> dict:
        """The settings the objective's TRL config (DPOConfig, KTOConfig, ORPOConfig, CPOConfig) takes, under TRL's
        names: every trl field that applies to `objective` (default: this config's)."""
        objective = objective or self.objective
        return {trl_name(f): getattr(self, f.name) for f in dataclasses.fields(self)
                if f.metadata.get("trl") and applies(f, objective)}

    def lora_kwargs(self) -> dict:
        """The settings PEFT's LoraConfig (and Unsloth's get_peft_model) take, under their names."""
        return {f.metadata["lora"]: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("lora")}


def trl_name(f: dataclasses.Field) -> str:
    """The name TRL's config gives the field."""
    trl = f.metadata.get("trl")
    return trl if isinstance(trl, str) else f.name


def applies(f: dataclasses.Field, objective: str) -> bool:
    """True when the field is used by `objective` (a field without `objectives` is used by all)."""
    only = f.metadata.get("objectives")
    return not only or objective in only


def field_names(cls=RunConfig) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def fields_of(cls=RunConfig) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls))


def meta(name: str, cls=RunConfig) -> dict:
    return {f.name: f.metadata for f in dataclasses.fields(cls)}[name]


def choices_of(f: dataclasses.Field) -> tuple | None:
    return f.metadata.get("choices")


def label_of(name: str, cls=RunConfig) -> str:
    return meta(name, cls).get("label") or name


def sweepable(cls=RunConfig) -> dict[str, list]:
    """Settings a sweep can vary, with values worth trying on a small model."""
    return {f.name: f.metadata["sweep"] for f in dataclasses.fields(cls) if f.metadata.get("sweep")}


@functools.cache
def _field_types(cls=RunConfig) -> dict[str, object]:
    return typing.get_type_hints(cls)


def _base_type(hint):
    args = typing.get_args(hint)
    if typing.get_origin(hint) is list or not args:
        return hint
    return next(a for a in args if a is not type(None))


def coerce(key: str, value, cls=RunConfig):
    """Turn YAML / command-line / form values into the field's type, with a message naming the key.

    PyYAML reads `2e-6` as a string (YAML 1.1 wants `2.0e-6`), and `--set` values arrive as text.
    """
    types = _field_types(cls)
    if key not in types:
        raise ConfigError(f"Unknown key: {key}. Known keys: {', '.join(field_names(cls))}")
    hint = types[key]
    optional = type(None) in typing.get_args(hint)
    base = _base_type(hint)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        if optional:
            return None
        raise ConfigError(f"{key} needs a value")
    try:
        if typing.get_origin(base) is list:
            item = typing.get_args(base)[0]
            if isinstance(value, str):
                value = [v.strip() for v in re.split(r"[,+]", value) if v.strip()]
            elif not isinstance(value, (list, tuple)):
                value = [value]
            return [_scalar(item, v) for v in value]
        return _scalar(base, value)
    except (TypeError, ValueError, OverflowError):
        name = getattr(base, "__name__", str(base))
        raise ConfigError(f"{key} must be {name}, got {value!r}") from None


def _scalar(kind, value):
    if kind is bool:
        if isinstance(value, str):
            low = value.strip().lower()
            if low not in ("true", "false", "yes", "no", "1", "0"):
                raise ValueError
            return low in ("true", "yes", "1")
        return bool(value)
    if kind is int:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, str):
            value = float(value) if any(c in value for c in ".eE") or value.strip().lower() in ("inf", "nan") else int(value)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        return int(value)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    if isinstance(value, (dict, list, tuple)):
        raise ValueError
    return str(value)


def _bound_problem(name: str, value, m: dict) -> str | None:
    gt, ge, lt, le = m.get("gt"), m.get("ge"), m.get("lt"), m.get("le")
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be a finite number, got {value!r}"
    hint = f" ({m['hint']})" if m.get("hint") else ""
    if ge is not None and lt is not None and lt <= 1:  # a fraction: the interval reads best
        if not ge <= value < lt:
            return f"{name} must be in [{ge:g}, {lt:g}), got {value!r}{hint}"
        return None
    if gt is not None and not value > gt:
        return f"{name} must be > {gt:g}, got {value!r}{hint}"
    if ge is not None and not value >= ge:
        return f"{name} must be at least {ge:g}, got {value!r}{hint}"
    if lt is not None and not value < lt:
        return f"{name} must be < {lt:g}, got {value!r}{hint}"
    if le is not None and not value <= le:
        return f"{name} must be at most {le:g}, got {value!r}{hint}"
    return None


def _problems(c: RunConfig):
    for f in dataclasses.fields(c):
        value, m = getattr(c, f.name), f.metadata
        if value is None:
            continue
        choices = choices_of(f)
        if choices and not m.get("custom"):
            for v in (value if isinstance(value, list) else [value]):
                if v not in choices:
                    yield f"{f.name} must be one of {', '.join(choices)}, got {v!r}"
        for v in (value if isinstance(value, list) else [value]):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                problem = _bound_problem(f.name, v, m)
                if problem:
                    yield problem
                    break
    if not c.model.strip():
        yield "model must name the embedded model, a hub id or a local folder"
    if c.max_steps == 0:
        yield f"max_steps must be -1 (use num_train_epochs) or > 0, got {c.max_steps!r}"
    if not c.lora_target_modules:
        yield "lora_target_modules must name at least one module (e.g. q_proj, v_proj)"
    if not c.loss_type:
        yield "loss_type must name at least one loss (e.g. sigmoid)"
    if c.loss_weights is not None and len(c.loss_weights) != len(c.loss_type):
        yield (f"loss_weights must give one weight per loss type: {len(c.loss_type)} type(s) "
               f"({', '.join(c.loss_type)}), {len(c.loss_weights)} weight(s)")
    if c.loss_weights is not None and not all(math.isfinite(w) and w >= 0 for w in c.loss_weights):
        yield f"loss_weights must be finite and >= 0, got {c.loss_weights!r}"
    if c.objective == "kto" and c.per_device_train_batch_size < 2:
        # TRL's KTO estimates its KL term from the other answers of the same batch: one answer has none.
        yield (f"per_device_train_batch_size must be at least 2 for objective kto (its KL estimate pairs each prompt "
               f"with another answer of the same batch), got {c.per_device_train_batch_size}")
    if c.objective == "dpo" and c.label_smoothing and not set(c.loss_type) & {"robust", "exo_pair"}:
        yield "label_smoothing is used only by loss_type robust or exo_pair; add one of them or set it to 0"


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
