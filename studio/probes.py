"""Probe answers and grids: the same prompts answered by the SFT baseline and each run, side by side.

Each column is generated greedily in one batch, so a column changes only when the weights do; a run's
column is kept in its probes.json and reused while nothing it depends on changed. Grids built on request
are kept under the exports folder (atomically written) and read back newest first.

    grid = probe_grid([run_a, run_b], default_probes(run_a))    # SFT baseline + one column per run
    print(grid_to_markdown(grid))
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path

import torch

from .chat import ChatEngine
from .errors import EvalError
from .generation import DEFAULTS, defaults
from .measures import MEASURE_LABELS, length_ratio, measures
from .runs import Run, get_run
from .store import atomic_write, check_name, grids_root, sweeps_root

BASELINE_NAME = "SFT baseline"
HANDBOOK_PROBE = "Write a paragraph to introduce supervised fine-tuning."
# Used when a run's data has no probes file beside it: the Handbook's probe, then a spread of everyday asks.
GENERIC_PROBES = [
    HANDBOOK_PROBE,
    "Explain the difference between LoRA and full fine-tuning.",
    "How should I start learning to cook?",
    "Any tips for writing a cover letter?",
    "What is the capital of Portugal?",
    "Describe how you would debug a slow database query.",
]
PROBE_MAX_NEW_TOKENS = DEFAULTS["probes"].max_new_tokens  # declared (with its why) in studio.generation


def probe_settings(max_new_tokens: int = PROBE_MAX_NEW_TOKENS, seed: int = 0):
    """The fixed generation settings of probe grids: greedy, so a column changes only when the weights do."""
    return defaults("probes", max_new_tokens=max_new_tokens, seed=seed)


# --- probe grids ------------------------------------------------------------------------------


def default_probes(run=None) -> list[str]:
    """The probes file beside the run's data (presets/data/<name>.probes.txt), else the Handbook's probe and a few more."""
    cfg = run if run is None or not hasattr(run, "config") else run.config()
    data = getattr(cfg, "data", "") or ""
    if data:
        path = Path(data)
        probes_file = path.with_name(path.name.split(".")[0] + ".probes.txt")
        if probes_file.is_file():
            return read_prompts(probes_file)
    return list(GENERIC_PROBES)


def read_prompts(path: str | Path) -> list[str]:
    """One prompt a line; blank lines and lines starting with # are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No prompts file {path}")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise EvalError(f"{path} holds no prompts (one a line).")
    return prompts


def _generate(engine, prompts: list[str], adapter: str | None, settings) -> tuple[list[str], list[bool]]:
    """Answers to the prompts in one batch, and for each whether it ended on its own (not at the token limit)."""
    texts, finished = [""] * len(prompts), []
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    for texts in engine.stream(conversations, [adapter] * len(prompts), settings, finished=finished):
        pass
    return [t.strip() for t in texts], finished


def column_answers(engine, run: Run, adapter: str, prompts: list[str], settings,
                    reuse: bool = True) -> tuple[list[str], list[bool]]:
    """A run's answers to the probes and their finish flags, reusing probes.json when prompts, settings, dtype
    and adapter all match."""
    key = _probe_key(engine, run, prompts, settings)
    cached = run.read_json("probes.json") if reuse else None
    if (cached and cached.get("key") == key and len(cached.get("answers", [])) == len(prompts)
            and len(cached.get("finished") or []) == len(prompts)):  # files from before the flags: generate again
        return cached["answers"], cached["finished"]
    answers, finished = _generate(engine, prompts, adapter, settings)
    run.write_json("probes.json", {"key": key, "prompts": prompts, "answers": answers, "finished": finished,
                                   "measures": measures(answers, finished)})
    return answers, finished


def baseline_answers(engine, prompts: list[str], settings) -> tuple[list[str], list[bool]]:
    """The SFT baseline's answers (adapters off), generated once per engine for the same prompts and settings."""
    key = json.dumps([list(prompts), dataclasses.asdict(settings)])
    cache = getattr(engine, "baseline_answers", None)
    if cache is not None and key in cache:
        return cache[key]
    answers = _generate(engine, prompts, None, settings)
    if cache is not None:
        cache[key] = answers
    return answers


def _probe_key(engine, run: Run, prompts: list[str], settings) -> dict:
    weights = run.adapter_dir / "adapter_model.safetensors"
    return {
        "prompts": list(prompts),
        "settings": dataclasses.asdict(settings),
        "dtype": str(next(engine.model.parameters()).dtype).removeprefix("torch."),
        "adapter_mtime": weights.stat().st_mtime if weights.is_file() else None,
    }


def probe_grid(runs: list, prompts: list[str], engine=None, settings=None, reuse: bool = True) -> dict:
    """Rows: probe prompts; columns: the SFT baseline, then each run; cells: answers with fixed settings.

    Each column is generated in one batch of all prompts, so a column never depends on which other
    runs share the grid. Greedy by default (seeded when sampling), so the same inputs give the same
    grid. A run's column is kept in its probes.json and reused while nothing it depends on changed.
    """
    runs = [r if isinstance(r, Run) else get_run(r) for r in runs]
    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise EvalError("A probe grid needs at least one prompt.")
    models = {r.config().model for r in runs}
    if len(models) > 1:
        raise EvalError(f"These runs use different base models ({', '.join(sorted(models))}); compare runs of one model.")
    for r in runs:
        if not r.has_adapter:
            raise EvalError(f"Run {r.id} has no saved adapter yet (state: {r.state}).")
    settings = settings or probe_settings()
    if engine is None:
        engine = ChatEngine(models.pop() if models else "embedded", dtype=torch.float32)
    elif models and engine.model_spec not in models:
        raise EvalError(f"This engine holds {engine.model_spec!r} but the runs were trained on {models.pop()!r}.")
    baseline = baseline_answers(engine, prompts, settings) if reuse else _generate(engine, prompts, None, settings)
    columns = [_column(BASELINE_NAME, *baseline)]
    for r in runs:
        adapter = engine.attach_run(r)
        columns.append(_column(r.id, *column_answers(engine, r, adapter, prompts, settings, reuse)))
    for c in columns:
        c["measures"]["length_ratio"] = length_ratio(columns[0]["measures"]["words"], c["measures"]["words"])
    return {"prompts": prompts, "columns": columns, "settings": dataclasses.asdict(settings),
            "model": engine.model_spec}


def _column(name: str, answers: list[str], finished: list[bool] | None = None) -> dict:
    return {"name": name, "answers": answers, "measures": measures(answers, finished)}


# --- export -----------------------------------------------------------------------------------


def publish_grid(grid: dict, name: str) -> list[str]:
    """Save the grid under store.grids_root()/name (an id, never a path); the CSV and Markdown paths to download."""
    paths = save_grid(grid, grids_root() / check_name("grids", name))
    return [str(paths["csv"]), str(paths["markdown"])]


def latest_grid() -> tuple[dict | None, list[str]]:
    """The newest grid built on request or by a sweep, and its CSV and Markdown files."""
    found = [p for root in (grids_root(), sweeps_root()) if root.is_dir() for p in root.glob("*/grid.json")]
    stamped = [(p.stat().st_mtime, p) for p in found if p.is_file()]  # one removed meanwhile is skipped
    if not stamped:
        return None, []
    newest = max(stamped)[1]
    grid = json.loads(newest.read_text(encoding="utf-8"))
    if newest.parent.parent == sweeps_root():  # a sweep's grid: copy it where downloads are served from
        return grid, publish_grid(grid, newest.parent.name)
    return grid, [str(newest.with_suffix(".csv")), str(newest.with_suffix(".md"))]


def save_grid(grid: dict, folder: str | Path, name: str = "grid") -> dict[str, Path]:
    """The grid as <name>.json (to show it again), .csv and .md (to share it) in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / f"{name}.json", "csv": folder / f"{name}.csv", "markdown": folder / f"{name}.md"}
    # Each file whole (latest_grid may read them meanwhile), and the JSON last: the grid latest_grid finds
    # by its JSON's time already has its CSV and Markdown beside it.
    atomic_write(paths["csv"], grid_to_csv(grid))
    atomic_write(paths["markdown"], grid_to_markdown(grid))
    atomic_write(paths["json"], json.dumps(grid, indent=2))
    return paths


def grid_to_csv(grid: dict) -> str:
    """One row per prompt, one column per model; the measures follow as rows named in brackets."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    names = [c["name"] for c in grid["columns"]]
    w.writerow(["prompt", *names])
    for i, prompt in enumerate(grid["prompts"]):
        w.writerow([prompt, *(c["answers"][i] for c in grid["columns"])])
    for key, label in MEASURE_LABELS.items():
        w.writerow([f"[{label}]", *(_fmt(c["measures"].get(key)) for c in grid["columns"])])
    return out.getvalue()


def grid_to_markdown(grid: dict) -> str:
    """A Markdown table (answers on one line each, newlines as <br>), the measures as the last rows."""
    names = [c["name"] for c in grid["columns"]]
    lines = ["| prompt | " + " | ".join(_md(n) for n in names) + " |", "|" + " --- |" * (len(names) + 1)]
    for i, prompt in enumerate(grid["prompts"]):
        lines.append(f"| {_md(prompt)} | " + " | ".join(_md(c["answers"][i]) for c in grid["columns"]) + " |")
    for key, label in MEASURE_LABELS.items():
        lines.append(f"| **{label}** | " + " | ".join(_fmt(c["measures"].get(key)) for c in grid["columns"]) + " |")
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)
