"""Rounds of self-improvement: the config that trains the next round on a labelled pool, and a run's lineage.

Round 0 is the SFT baseline. A pool sampled from a round-r model trains round r + 1, either from the
base (a fresh adapter) or continuing round r's adapter (`init_adapter`; TRL then uses that adapter,
frozen, as the reference). The run's config records `round` and `init_adapter`, so the lineage can be
read back from the run folders alone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .config import RunConfig, field_names, load_preset
from .data import Columns, load_preferences
from .errors import ConfigError
from .generate import generate_pool, round_of
from .generation import defaults
from .label import label_with_rubric, load_rubric
from .pools import Pool, get_pool, preference_rows, to_preferences
from .runs import Run, get_run
from .store import atomic_write, pools_root
from .thumbs import to_kto
from .winrate import comparison_pool, measure


def next_round_config(pool: Pool | str, base_cfg: RunConfig, continue_from=None, include_original: bool = False,
                      labeller: str | None = None, feedback: str = "pairs") -> RunConfig:
    """A RunConfig that trains the next round on the pool's labelled pairs (or, with feedback="thumbs", on the
    thumbs up / down given to its answers one at a time: KTO's unpaired file, trained with objective kto).

    - data: the pool's preference file (written now from the standing decisions, of `labeller` or all);
      with `include_original`, that file plus every pair of `base_cfg.data` in one conversational JSONL.
    - model: the pool's base model; continue_from: a run whose adapter this round keeps training.
    - round: one past the pool's generator (and past continue_from's round).
    Everything else (learning rate, beta, LoRA shape for a fresh adapter, ...) comes from `base_cfg`.
    """

    pool = get_pool(pool)
    info = pool.info()
    if feedback not in ("pairs", "thumbs"):
        raise ConfigError(f"feedback must be pairs or thumbs, got {feedback!r}")
    if feedback == "thumbs":
        prefs, _ = to_kto(pool, labeller)
    else:
        prefs, _ = to_preferences(pool, labeller)
    data = prefs
    if include_original:
        if not base_cfg.data:
            raise ConfigError("include_original needs the original data: the base config has no `data`.")
        data = _combined_thumbs(pool, prefs, base_cfg) if feedback == "thumbs" else _combined(pool, prefs, base_cfg)
    parent = None
    if continue_from is not None:
        parent = continue_from if isinstance(continue_from, Run) else get_run(continue_from)
        if not parent.has_adapter:
            raise ConfigError(f"Run {parent.id} has no saved adapter to continue from (state: {parent.state}).")
        if parent.config().model != info.get("base_model"):
            raise ConfigError(f"Run {parent.id} was trained on {parent.config().model!r}, but the pool's answers "
                              f"come from {info.get('base_model')!r}.")
    round_ = max(int(info.get("round") or 1), round_of(parent) + 1 if parent else 1)
    changes = {"model": info.get("base_model") or base_cfg.model, "data": str(data),
               "prompt_col": None, "chosen_col": None, "rejected_col": None, "system_col": None,
               "prompt_template": "chat"}
    if feedback == "thumbs":  # single answers: only KTO reads them (its KL estimate needs 2 answers a batch)
        changes.update(objective="kto", per_device_train_batch_size=max(2, base_cfg.per_device_train_batch_size))
    if not include_original:
        changes["eval_data"] = None  # the original held-out file measures the original task, not this pool
    lineage = {"round": round_, "init_adapter": str(parent.adapter_dir) if parent else None}
    known = set(field_names())
    if parent and "init_adapter" not in known:
        raise ConfigError("This build cannot continue an adapter yet (RunConfig has no init_adapter); "
                          "train the next round from the base instead.")
    changes.update({k: v for k, v in lineage.items() if k in known})
    return base_cfg.replace(**changes)


def _combined(pool: Pool, prefs: Path, base_cfg: RunConfig) -> Path:
    """The pool's pairs and the original data as one conversational preference file in the pool folder."""

    columns = Columns(base_cfg.prompt_col, base_cfg.chosen_col, base_cfg.rejected_col, base_cfg.system_col)
    original = load_preferences(base_cfg.data, columns).pairs
    labelled = load_preferences(prefs).pairs
    path = pool.path / "train-with-original.jsonl"
    # Every row in one form (message lists), so the file's layout is detected once for all of them.
    atomic_write(path, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in labelled + original))
    return path


def _combined_thumbs(pool: Pool, kto_file: Path, base_cfg: RunConfig) -> Path:
    """The pool's thumbs and the original pairs (each as one thumbs up and one down) as one KTO file."""

    columns = Columns(base_cfg.prompt_col, base_cfg.chosen_col, base_cfg.rejected_col, base_cfg.system_col)
    original = load_preferences(base_cfg.data, columns)
    rows = load_preferences(kto_file).pairs + original.unpair(base_cfg.seed).pairs
    path = pool.path / "thumbs-with-original.kto.jsonl"
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def lineage(run) -> list[dict]:
    """The run and its ancestors, oldest first, from round 0 (the SFT baseline) to this run.

    Each entry: round, run id (None for the baseline), its data file and the pool it came from.
    """

    chain = []
    current = get_run(run) if not hasattr(run, "config") else run
    seen = set()
    while current is not None and current.id not in seen:
        seen.add(current.id)
        cfg = current.config()
        parent_dir = getattr(cfg, "init_adapter", None)
        chain.append({"round": getattr(cfg, "round", None) or 1, "run": current.id, "data": cfg.data,
                      "pool": _pool_of(cfg.data), "continues": Path(parent_dir).parent.name if parent_dir else None})
        current = _run_of_adapter(parent_dir) if parent_dir else None
    model = chain[-1]["run"] and get_run(chain[-1]["run"]).config().model
    chain.append({"round": 0, "run": None, "data": None, "pool": None, "continues": None, "model": model})
    return list(reversed(chain))


def _pool_of(data: str) -> str | None:
    path = Path(data or "")
    return path.parent.name if path.parent.parent == pools_root() else None


def _run_of_adapter(adapter_dir: str):
    folder = Path(adapter_dir).parent
    return Run(folder) if (folder / "status.json").is_file() else None


# --- one whole round, headless (the self-improve-cpu demo) ------------------------------------------------


def round_plan(preset_name: str = "self-improve-cpu") -> tuple:
    """(preset, its `self_improve` card section with paths made absolute)."""

    preset = load_preset(preset_name)
    plan = dict(preset.card.get("self_improve") or {})
    if not plan:
        raise ConfigError(f"Preset {preset.name} has no `self_improve` section in its card (prompts, heldout, rubric).")
    for key in ("prompts", "heldout", "rubric"):
        if key not in plan:
            raise ConfigError(f"Preset {preset.name}: card.self_improve needs `{key}`.")
        plan[key] = str((preset.path.parent / plan[key]).resolve())
    return preset, plan


def self_improve_round(preset_name: str = "self-improve-cpu", progress=None, should_stop=None, engine=None) -> dict:
    """Generate a pool from the SFT baseline, label it with the rubric, train round 1, measure its win rate.

    Returns the figures (seconds per phase, pool ids, run id, the win-rate result, example answers).
    A stop between phases returns what is done so far, with `stopped: True`.
    """

    # deferred: chat, probes and training import torch; a round's config and lineage are read without it
    from .chat import ChatEngine
    from .probes import read_prompts
    from .training import TrainingJob

    preset, plan = round_plan(preset_name)
    cfg = preset.config
    rubric = load_rubric(plan["rubric"])
    report: dict = {"preset": preset.name, "rubric": rubric.name, "goal": rubric.goal, "seconds": {}}
    stopped = lambda: bool(should_stop and should_stop())  # noqa: E731
    t0 = time.time()

    def phase(name: str, started: float) -> None:
        report["seconds"][name] = round(time.time() - started, 1)

    started = time.time()
    engine = engine or ChatEngine(cfg.model)
    phase("load model", started)

    started = time.time()
    pool_defaults = defaults("pool")  # what the plan leaves out
    settings = pool_defaults.replace(max_new_tokens=int(plan.get("max_new_tokens", pool_defaults.max_new_tokens)),
                                     temperature=float(plan.get("temperature", pool_defaults.temperature)),
                                     top_p=float(plan.get("top_p", pool_defaults.top_p)),
                                     seed=int(plan.get("seed", pool_defaults.seed)))
    pool = generate_pool(cfg.model, None, read_prompts(plan["prompts"]), k=int(plan.get("k", 2)), settings=settings,
                         progress=progress, should_stop=should_stop, engine=engine, prompts_source=plan["prompts"])
    phase("generate", started)
    report["pool"] = pool.id
    if stopped():
        return {**report, "stopped": True}

    started = time.time()
    report["labels"] = label_with_rubric(pool, rubric)
    phase("label", started)

    started = time.time()
    run_cfg = next_round_config(pool, cfg, labeller=rubric.labeller)
    job = TrainingJob(run_cfg, preset=preset.name).start()
    while job.is_alive():
        if stopped():
            job.stop()
        if progress and job.total_steps:
            progress("training", job.step, job.total_steps)
        time.sleep(0.5)
    phase("train", started)
    report.update(run=job.run.id, run_state=job.state, steps=job.step, pairs=len(preference_rows(pool, rubric.labeller)))
    if job.state != "done":
        return {**report, "stopped": job.state == "stopped", "error": job.error}

    started = time.time()
    eval_settings = defaults("winrate", max_new_tokens=int(plan.get("eval_max_new_tokens",
                                                                    defaults("winrate").max_new_tokens)))
    heldout = comparison_pool(job.run.id, "baseline", read_prompts(plan["heldout"]), eval_settings,
                              progress=progress, should_stop=should_stop, engine=engine, prompts_source=plan["heldout"])
    report["heldout_pool"] = heldout.id
    if stopped():
        return {**report, "stopped": True}
    label_with_rubric(heldout, rubric)
    report["winrate"] = measure(heldout, rubric.labeller)
    phase("win rate", started)
    report["seconds"]["total"] = round(time.time() - t0, 1)
    report["examples"] = [{"prompt": c["prompt"], "round 1": c["answers"][0]["text"], "baseline": c["answers"][1]["text"]}
                          for c in heldout.candidates()]
    return report



FEW_PAIRS = 16  # below this many labelled pairs a round is warned about: DPO learns little from a handful


def few_pairs_warning(pairs: int) -> str | None:
    """A warning for a round trained on only a handful of labelled pairs (None when there are enough)."""
    if pairs >= FEW_PAIRS:
        return None
    return (f"Only {pairs} labelled pair{'s' if pairs != 1 else ''} to train on: DPO learns little from so few (the "
            f"demo presets train on 170), and the round may not differ from its parent. Label more pairs (at least "
            f"{FEW_PAIRS}), or tick 'Also train on the Train tab's data'.")
