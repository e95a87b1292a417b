"""What a run reads: its training and held-out pairs from its settings, in the form its trainer takes."""

from __future__ import annotations

from pathlib import Path

from .data import FORMATS, Columns, DataError, load_preferences
from .data.findings import find_all


def columns_of(cfg) -> Columns:
    """The column mapping a run's settings give (None: detected from the file)."""
    return Columns(cfg.prompt_col, cfg.chosen_col, cfg.rejected_col, cfg.system_col)


ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{}\n\n### Response:\n"
)


def load_run_data(cfg, tokenizer):
    """(all pairs of `data`, train pairs, held-out pairs) exactly as a run with this config uses them.

    The held-out pairs are `eval_data` when set, else a seeded `eval_fraction` of `data`; training
    and evaluation both call this, so an evaluation scores the very pairs training held out.
    """
    columns = columns_of(cfg)
    data = load_preferences(cfg.data, columns, tokenizer=tokenizer, max_length=cfg.max_length)
    check_objective(data, cfg, "data")
    if cfg.eval_data:
        held = load_preferences(cfg.eval_data, columns, tokenizer=tokenizer, max_length=cfg.max_length)
        check_objective(held, cfg, "eval_data")
        train, held_out = data, held
    else:
        train, held_out = data.split(cfg.eval_fraction, cfg.seed)
    return data, train, held_out


def check_objective(data, cfg, key: str = "data") -> None:
    """Unpaired (thumbs up/down) data trains only KTO: a paired objective refuses it, naming the one that reads it."""
    if data.unpaired and cfg.objective != "kto":
        raise DataError(
            f"{data.report.source} ({key}) holds single answers with a thumbs up or down (layout "
            f"{data.report.layout}), which only objective kto reads; objective {cfg.objective} needs pairs "
            "(prompt/chosen/rejected). Set objective to kto, or give a file of pairs.")


def eval_source(cfg) -> str:
    """Where a run's held-out pairs come from, in words (the Train tab and data.json say it)."""
    return cfg.eval_data or f"{cfg.eval_fraction:.0%} of the training data (seed {cfg.seed})"


def data_findings(cfg, data, train=None, held_out=None, tokenizer=None) -> list[dict]:
    """The data doctor's findings for a run with these settings (studio.data.findings): `data` is every usable
    pair of cfg.data; the held-out pairs are read or split as the run makes them when not given. With a
    tokenizer, `truncated` counts tokens at cfg.max_length."""

    if held_out is None:
        if cfg.eval_data:
            train = data
            held_out = load_preferences(cfg.eval_data, columns_of(cfg), tokenizer=tokenizer,
                                        max_length=cfg.max_length if tokenizer is not None else None)
        else:
            train, held_out = data.split(cfg.eval_fraction, cfg.seed)
    name = Path(cfg.eval_data).name if cfg.eval_data else "the held-out split"
    return find_all(data, held_out, name, train=train, eval_where=f"held out: {eval_source(cfg)}",
                    tokenizer=tokenizer, max_length=cfg.max_length if tokenizer is not None else None)


def held_out_count(cfg) -> int | None:
    """How many pairs a run with these settings holds out, read now without a tokenizer (prompts that reach
    max_length are not dropped here, so it can be a little high); None for a hub dataset (not read here)."""
    columns = columns_of(cfg)
    source = cfg.eval_data or cfg.data
    if not source or not Path(source).is_file():
        return None
    if cfg.eval_data:
        return len(load_preferences(cfg.eval_data, columns))
    return len(load_preferences(cfg.data, columns).split(cfg.eval_fraction, cfg.seed)[1])


def check_sources(cfg) -> None:
    """Read the run's local data files now, without a tokenizer (fast), so a missing file, an unknown layout or
    a file with no usable pair is refused before a run starts. Hub ids are left to the run itself."""
    columns = columns_of(cfg)
    for key in ("data", "eval_data"):
        source = getattr(cfg, key)
        if source and (Path(source).exists() or Path(source).suffix.lower() in FORMATS):
            check_objective(load_preferences(source, columns), cfg, key)


def examples_a_pair(objective: str, unpaired: bool) -> int:
    """Training examples one row of the data becomes: KTO splits a pair into two single answers (to_trl)."""
    return 2 if objective == "kto" and not unpaired else 1


def to_trl(pairs, cfg):
    """The normalised pairs as a datasets.Dataset in the form the prompt template and the objective ask for.

    KTO reads single answers: a pair becomes its chosen answer with a thumbs up and its rejected answer with a
    thumbs down (PreferenceSet.unpair), so paired files train KTO too.
    """
    if cfg.objective == "kto":
        pairs = pairs.unpair(cfg.seed)
    if cfg.prompt_template == "chat":
        return pairs.to_dataset()
    from datasets import Dataset

    # The Handbook's recipe: an Alpaca instruction prompt and plain-text answers (TRL appends EOS).
    rows = []
    for p in pairs.pairs:
        users = [m["content"] for m in p["prompt"] if m["role"] == "user"]
        prompt = ALPACA_TEMPLATE.format(users[-1])
        if pairs.unpaired:
            rows.append({"prompt": prompt, "completion": p["completion"][-1]["content"], "label": p["label"]})
        else:
            rows.append({"prompt": prompt, "chosen": p["chosen"][-1]["content"],
                         "rejected": p["rejected"][-1]["content"]})
    return Dataset.from_list(rows)
