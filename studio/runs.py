"""The run folder: everything a run needs lives in runs/<run-id>/, so a reload or a restart can pick it up.

    runs/<run-id>/
      config.yaml    resolved RunConfig + preset + backend/device/dtype + library versions
      data.json      data report (layout, pairs, dropped rows, token stats)
      metrics.jsonl  one JSON object per log event
      status.json    state, error text, step counts, pid
      adapter/       adapter_config.json + adapter_model.safetensors
      checkpoints/   the newest full trainer checkpoint (adapter, optimizer, scheduler, RNG): what resume reads
      eval.json      evaluation results
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import RunConfig
from .errors import ConfigError, JobBusy, NotFound
from .store import (
    append_jsonl,
    atomic_write,
    children,
    claim_folder,
    ended_message,
    find,
    interrupted,
    orphaned,
    read_jsonl,
    runs_root,  # noqa: F401 - named in store.py; imported from here by its older readers
)

STATES = ("queued", "loading", "training", "saving", "done", "stopped", "failed", "interrupted")
LIVE_STATES = ("queued", "loading", "training", "saving")
RESUMABLE_STATES = ("stopped", "interrupted", "failed")
CHECKPOINT_PREFIX = "checkpoint-"  # transformers' Trainer names its checkpoint folders so
STATUS = "status.json"  # marks a folder as a run


def claim_run_dir(run_dir: Path | None, label: str = "run") -> Path:
    """Create a run's folder so that no other run, in this process or another, can have it.

    Without `run_dir` a new id under runs/ is claimed with an exclusive mkdir (two processes started in
    the same second get two folders). A given folder must be new or empty: a run never writes into
    someone else's files.
    """
    if run_dir is None:
        return claim_folder("runs", label)
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} is a file, not a folder: give a new or empty folder for the run.")
    if path.is_dir() and any(path.iterdir()):
        what = "an earlier run" if (path / "status.json").is_file() else "files that are not a run of this studio"
        raise ConfigError(f"--out {path} is not empty (it holds {what}); give a new or empty folder so nothing "
                          "there is overwritten.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"Cannot write the run folder {path}: {e.strerror or e}.") from None
    return path


class MetricsLog:
    """Thread-safe, append-only list of logged dicts, mirrored line by line to metrics.jsonl.

    Readers poll with `since(i)` and keep their own cursor, so any number of pages or
    processes can follow one run without the trainer knowing about them.
    """

    def __init__(self, path: Path | None = None):
        self.path = path
        self._rows: list[dict] = []
        self._lock = threading.Lock()
        if path is not None and path.is_file():
            self._rows = read_jsonl(path)

    def append(self, row: dict) -> None:
        with self._lock:
            self._rows.append(row)
            if self.path is not None:
                append_jsonl(self.path, row)

    def since(self, index: int = 0) -> list[dict]:
        with self._lock:
            return list(self._rows[index:])

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)


@dataclass
class Run:
    """A run folder on disk."""

    path: Path
    writes: bool = True  # False in the other processes of a multi-process run: only the main one writes

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def has_adapter(self) -> bool:
        return (self.adapter_dir / "adapter_config.json").is_file()

    def create(self) -> "Run":
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    # --- config ---
    def write_config(self, cfg: RunConfig, **extra) -> None:
        if not self.writes:
            return
        body = {**cfg.to_dict(), **({"_run": extra} if extra else {})}
        atomic_write(self.path / "config.yaml", yaml.safe_dump(body, sort_keys=False))

    def read_config_raw(self) -> dict:
        path = self.path / "config.yaml"
        return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def config(self) -> RunConfig:
        values = self.read_config_raw()
        values.pop("_run", None)
        return RunConfig.from_dict(values, origin=str(self.path / "config.yaml"))

    @property
    def info(self) -> dict:
        """Preset, backend, device, dtype and versions recorded when the run started."""
        return self.read_config_raw().get("_run", {})

    # --- status ---
    def write_status(self, **fields) -> dict:
        status = {**self.status(), **fields, "updated": time.time()}
        if not self.writes:
            return status
        atomic_write(self.path / "status.json", json.dumps(status, indent=2))
        return status

    def status(self) -> dict:
        path = self.path / "status.json"
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return {}

    @property
    def state(self) -> str:
        return self.status().get("state", "unknown")

    # --- data, metrics, eval ---
    def write_json(self, name: str, value) -> None:
        if not self.writes:
            return
        atomic_write(self.path / name, json.dumps(value, indent=2))

    def read_json(self, name: str):
        path = self.path / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def progress(self) -> dict:
        """The same dict as TrainingJob.progress(), read from the folder (a run of another process, or a past one)."""
        status = self.status()
        state, started = status.get("state", "unknown"), status.get("started")
        if state in LIVE_STATES and status.get("pid") == os.getpid() and not running_here(self.path):
            # This process's job ended without writing its last state (a full disk): it failed, nothing runs it.
            state = "failed"
            status["error"] = status.get("error") or (f"the run ended while {status.get('state')} and its last "
                                                      "state could not be written (is the disk full?)")
        elif orphaned(status, LIVE_STATES):
            # The process running it died (kill -9, a crash): say so now, not at the next restart.
            state = "interrupted"
            status["error"] = ended_message(status)
        live = state in LIVE_STATES
        end = time.time() if live else (status.get("finished") or status.get("updated"))
        elapsed = end - started if started and end else None
        step, total = status.get("step") or 0, status.get("total_steps")
        done_here = step - (status.get("resumed_from") or 0)  # `started` is the start of this stint
        eta = elapsed / done_here * (total - step) if live and elapsed and done_here > 0 and total else None
        return {"state": state, "phase": status.get("phase", state), "step": step, "total_steps": total,
                "elapsed": elapsed, "eta": eta, "error": status.get("error"), "run": self.id}

    def exists(self) -> bool:
        return (self.path / "status.json").is_file()

    def metrics_size(self) -> int:
        """Bytes in metrics.jsonl: grows with every logged row, so a reader can tell cheaply that it changed."""
        path = self.path / "metrics.jsonl"
        return path.stat().st_size if path.is_file() else 0

    def metrics(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
        return read_jsonl(path) if path.is_file() else []

    # --- resume ---
    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self) -> tuple[Path, int] | None:
        """The newest complete trainer checkpoint and its step, or None.

        The Trainer writes trainer_state.json after the weights, optimizer, scheduler and RNG state, so a
        folder without it was cut short by a crash and the one before it is used.
        """
        found = []
        for path in self.checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*") if self.checkpoint_dir.is_dir() else []:
            step = path.name.removeprefix(CHECKPOINT_PREFIX)
            if step.isdigit() and (path / "trainer_state.json").is_file():
                found.append((int(step), path))
        if not found:
            return None
        step, path = max(found)
        return path, step

    def resume_refusal(self) -> str | None:
        """Why this run cannot be resumed, in words for its user; None when it can."""
        progress = self.progress()
        state, step, total = progress["state"], progress["step"], progress["total_steps"]
        if state == "done":
            return f"Run {self.id} is done ({step}/{total} steps): there is nothing left to resume."
        if state in LIVE_STATES:
            return f"Run {self.id} is still {state} (step {step}/{total or '?'}): stop it or let it finish first."
        if state not in RESUMABLE_STATES:
            return f"Run {self.id} is {state}: only a stopped, interrupted or failed run can be resumed."
        if self.status().get("failure") == "NonFiniteTraining":
            return (f"Run {self.id} diverged (its loss or weights became NaN): resuming it with the same settings "
                    "would diverge again. Start a new run with a lower learning rate or beta.")
        if self.checkpoint() is None:
            return (f"Run {self.id} has no trainer checkpoint to resume from (one is saved after the first step, "
                    "every save_steps and when a run is stopped; a run stopped before its first step, or made by an "
                    "older version of the studio, has none).")
        return None

    def keep_metrics_until(self, step: int) -> int:
        """Drop the rows logged after `step` (and the end-of-training summary), so a run resumed from the checkpoint
        of `step` logs each later step once. Returns how many rows were dropped."""
        rows = self.metrics()
        kept = [r for r in rows if (r.get("step") or 0) <= step and "train_runtime" not in r]
        if len(kept) != len(rows):
            atomic_write(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
        return len(rows) - len(kept)

    def record_resume(self, step: int, checkpoint: Path) -> list[dict]:
        """Add this resume (when, from which step and checkpoint) to config.yaml's `_run.resumed`; returns the list."""
        raw = self.read_config_raw()
        info = raw.setdefault("_run", {})
        info["resumed"] = [*(info.get("resumed") or []),
                           {"at": time.strftime("%Y-%m-%d %H:%M:%S"), "time": time.time(), "from_step": step,
                            "checkpoint": checkpoint.name}]
        atomic_write(self.path / "config.yaml", yaml.safe_dump(raw, sort_keys=False))
        return info["resumed"]

    def summary(self) -> dict:
        """One row for a runs table: key settings, state, final metrics, time."""
        status, raw = self.status(), self.read_config_raw()
        train = [m for m in self.metrics() if "loss" in m]
        evals = [m for m in self.metrics() if "eval_loss" in m]
        last, last_eval = (train[-1] if train else {}), (evals[-1] if evals else {})
        return {
            "run": self.id,
            "preset": raw.get("_run", {}).get("preset"),
            "state": status.get("state"),
            "model": raw.get("model"),
            "method": raw.get("method"),
            "objective": raw.get("objective", "dpo"),
            # The beta of the run's own objective (ORPO's and SimPO's are settings of their own).
            "beta": raw.get({"orpo": "orpo_beta", "simpo": "simpo_beta"}.get(raw.get("objective"), "beta")),
            "learning_rate": raw.get("learning_rate"),
            "step": status.get("step"),
            "loss": last.get("loss"),
            "margins": last.get("rewards/margins"),
            "accuracy": last.get("rewards/accuracies"),
            "eval_loss": last_eval.get("eval_loss"),
            "eval_margins": last_eval.get("eval_rewards/margins"),
            "started": status.get("first_started") or status.get("started"),
            "seconds": (status.get("earlier_seconds") or 0)
            + (status.get("finished") or status.get("updated") or 0) - (status.get("started") or 0)
            if status.get("started")
            else None,
            "error": status.get("error"),
        }


def data_in_use(root: Path | None = None) -> set[Path]:
    """Every data file a run reads (its data and held-out data): an upload a run names is never cleaned away."""
    used = set()
    for run in list_runs(root):
        raw = run.read_config_raw() or {}
        used |= {Path(raw[k]) for k in ("data", "eval_data") if raw.get(k)}
    return used


def list_runs(root: Path | None = None) -> list[Run]:
    runs = [Run(p) for p in children("runs", STATUS, root)]
    return sorted(runs, key=lambda r: r.status().get("started") or 0, reverse=True)


def get_run(run: str | Path | Run, folders: bool = False) -> Run:
    """A run by id under STUDIO_HOME/runs (an id is a name, never a path), or by folder.

    A `Path` is a folder the program chose; a string is a folder only with `folders=True`, for what the
    operator types on the command line. NotFound names the id and the recent runs.
    """
    if isinstance(run, Run):
        return run
    if isinstance(run, Path) or folders:
        path = Path(run).expanduser()
        if (path / STATUS).is_file():
            return Run(path)
        if isinstance(run, Path):
            raise NotFound(f"No run in {path}: it holds no {STATUS}.")
    return Run(find("runs", str(run), STATUS))


_running_here: set[str] = set()  # run folders a job of this process is running now (training.py keeps it)


def running_here(path: Path, running: bool | None = None) -> bool:
    """Whether a job of this process runs the run in `path`; `running` records that it starts (True) or ends."""
    key = str(Path(path).resolve())
    if running is True:
        _running_here.add(key)
    elif running is False:
        _running_here.discard(key)
    return key in _running_here


def mark_interrupted(root: Path | None = None, live_ids: set[str] = frozenset()) -> list[str]:
    """Runs left in a live state by a process that died are marked interrupted (their files stay)."""
    marked = []
    for run in interrupted(list_runs(root), Run.status, LIVE_STATES, live_ids):
        run.write_status(state="interrupted", error=ended_message(run.status()))
        marked.append(run.id)
    return marked


def delete_run(run: Run) -> None:
    if run.progress()["state"] in LIVE_STATES:  # the same answer as the runs table, Stop and Resume give
        raise JobBusy(f"Run {run.id} is still {run.state}; stop it before deleting it.")
    shutil.rmtree(run.path)
