"""`Sweep`: a small grid of settings trained as a queue of ordinary runs, then evaluated side by side.

    sweep = Sweep(load_preset("twin-style-cpu").config, {"beta": [0.1, 0.5], "learning_rate": [5e-5, 1e-4]},
                  preset="twin-style-cpu").start()
    sweep.wait()                      # or sweep.stop(): ends the current run (its adapter is saved), skips the rest
    sweep.comparison()                # one row per run: swept values, state, loss, held-out accuracies
    sweep.probe_grid                  # SFT baseline + every finished run on the same probes (also grid.md/.csv)

Each run is a normal run folder under STUDIO_HOME/runs/ (the web app and `python -m studio eval`
read it like any other) with a sweep.json naming its sweep and swept values; the sweep itself lives
in STUDIO_HOME/sweeps/<id>/: sweep.json (its grid, base config, run ids and, once evaluated, the
numbers) and the probe grid as grid.json, grid.csv and grid.md.
The Handbook chose its DPO settings this way: many small trainings, compared on the same questions.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from pathlib import Path

from .config import ConfigError, RunConfig, coerce, field_names, resolve_for_hardware
from .jobs import Job, active as active_job
from .runs import Run
from .store import atomic_write, check_name, children, claim_folder, find, slug, sweeps_root

MAX_SETTINGS = 2  # a 2-D grid still reads as a table; more axes are better done one at a time
MAX_RUNS = 12  # on CPU each run is minutes; a dozen is an afternoon
UNSWEEPABLE = ("model", "lora_target_modules", "loss_weights")  # one base model per comparison; lists of many values
STATES = ("queued", "training", "evaluating", "done", "stopped", "failed")
LIVE_STATES = ("queued", "training", "evaluating")  # the sweep still has work to do
RECORD = "sweep.json"  # marks a folder as a sweep


def parse_grid(specs: list[str]) -> dict[str, list]:
    """`["beta=0.1,0.5", "learning_rate=5e-5,1e-4"]` -> {"beta": [0.1, 0.5], "learning_rate": [5e-05, 0.0001]}."""
    grid: dict[str, list] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise ConfigError(f"--grid expects KEY=V1,V2,…, got {spec!r}")
        if key in grid:
            raise ConfigError(f"{key} is given twice; put all its values in one --grid {key}=V1,V2,…")
        grid[key] = [v.strip() for v in values.split(",") if v.strip()]
    return grid


def check_grid(grid: dict[str, list]) -> dict[str, list]:
    """Coerce each value to its field's type and enforce the size limits, with messages naming the key."""
    if not grid:
        raise ConfigError("A sweep needs at least one setting to vary, e.g. beta=0.1,0.5")
    if len(grid) > MAX_SETTINGS:
        raise ConfigError(f"A sweep varies at most {MAX_SETTINGS} settings at once; got {len(grid)}: {', '.join(grid)}")
    checked = {}
    for key, values in grid.items():
        if key not in field_names():
            raise ConfigError(f"Unknown key in the grid: {key}. Known keys: {', '.join(field_names())}")
        if key in UNSWEEPABLE:
            raise ConfigError(f"{key} cannot be swept: {'each model needs its own baseline; sweep one model at a time' if key == 'model' else 'its value is a list'}")
        values = [coerce(key, v) for v in (values if isinstance(values, (list, tuple)) else [values])]
        if not values:
            raise ConfigError(f"{key} has no values to sweep")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{key} lists a value twice: {values}")
        checked[key] = values
    total = 1
    for values in checked.values():
        total *= len(values)
    if total > MAX_RUNS:
        raise ConfigError(f"This grid makes {total} runs; a sweep runs at most {MAX_RUNS}. Drop some values.")
    return checked


class Sweep(Job):
    """A queue of runs over the product of the grid's values, trained one after another on the job slot."""

    kind = "sweep"

    def __init__(self, base_cfg: RunConfig, grid: dict[str, list], preset: str | None = None,
                 sweep_id: str | None = None, evaluate: bool = True, probes: list[str] | None = None,
                 settings=None):
        self.base = base_cfg
        super().__init__()
        self.grid = check_grid(grid)
        self.preset = preset
        self.evaluate = evaluate
        self.probes = probes  # None: each run's default probes
        self.settings = settings  # probe generation settings (None: studio.evaluate.probe_settings())
        self.values = [dict(zip(self.grid, combo)) for combo in itertools.product(*self.grid.values())]
        self._configs = [base_cfg.replace(**v) for v in self.values]  # ConfigError here names the bad combination
        for cfg in self._configs:
            resolve_for_hardware(cfg)  # e.g. qlora on CPU: refused before anything runs
        if not base_cfg.data:
            raise ConfigError("No preference data: set data to a file or a hub dataset id.")
        # The id is claimed now (an exclusive mkdir), so it can be shown before the sweep starts.
        self.path = sweeps_root() / check_name("sweeps", sweep_id) if sweep_id else claim_folder("sweeps", preset or "sweep")
        self.id = self.path.name
        self.title = f"sweep {self.id}"
        self.current = None  # the TrainingJob that runs now
        self.index = -1  # which combination runs now (0-based)
        self.runs: list[Run] = []
        self.entries: list[dict] = [{"values": v, "run": None, "state": "queued"} for v in self.values]
        self.results: dict[str, dict] = {}  # run id -> evaluate_run() result
        self.probe_grid: dict | None = None  # studio.evaluate.probe_grid() of the finished runs

    def configs(self) -> list[RunConfig]:
        """Every combination of the grid applied to the base config, in queue order."""
        return list(self._configs)

    # --- control (the slot, stop, wait and is_alive come from Job) ---
    def start(self) -> "Sweep":
        try:
            return super().start()
        except BaseException:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # a refused start (the slot is busy) leaves no empty sweep folder behind
            raise

    def before_start(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.started = self.started_at
        self._save()

    def stop(self) -> None:
        """End the current run at its next step (its adapter is saved) and skip the rest."""
        super().stop()
        if self.current is not None:
            self.current.stop()

    @classmethod
    def active(cls) -> "Sweep | None":
        """The sweep running in this process, if any (a finished one is no longer active)."""
        job = active_job()
        return job if isinstance(job, Sweep) else None

    # --- the thread ---
    def _run(self) -> None:
        try:
            for i, cfg in enumerate(self._configs):
                if self._stop.is_set():
                    self.entries[i]["state"] = "skipped"
                    continue
                self.index = i
                self._train(i, cfg)
            self._save()
            if self.evaluate and not self._stop.is_set():
                self._set("evaluating")
                self._evaluate()
            failed = any(e["state"] == "failed" for e in self.entries)
            self._set("stopped" if self._stop.is_set() else "failed" if failed else "done")
        except BaseException as e:  # noqa: BLE001 - the sweep must end in a state, whatever went wrong
            self.error = f"{type(e).__name__}: {e}"
            self._set("failed")
        finally:
            self.current = None

    def _train(self, i: int, cfg: RunConfig) -> None:
        # deferred: training imports torch; a sweep is listed and planned without it
        from .training import TrainingJob

        label = _slug("-".join(f"{_short(k)}{value_text(v)}" for k, v in self.values[i].items()))
        job = TrainingJob(cfg, preset=self.preset, label=f"{_slug(self.preset or 'sweep')}-{label}")

        def started(job) -> None:  # its run folder exists now
            self.current = job
            self.runs.append(job.run)
            job.run.write_json("sweep.json", {"sweep": self.id, "index": i, "values": self.values[i], "grid": self.grid})
            self.entries[i].update(run=job.run.id, state="training")
            self._set("training")
            self.report(f"training run {i + 1}/{len(self._configs)}", i, len(self._configs))
            if self._stop.is_set():  # stop() came between the check and the start
                job.stop()

        job.run_here(on_start=started)  # the sweep holds the slot: its runs train in its thread, one after another
        self.entries[i]["state"] = job.state
        self.current = None

    def _evaluate(self) -> None:
        import torch

        # deferred: chat, evaluate and probes import torch; a sweep is listed and planned without it
        from .chat import ChatEngine
        from .evaluate import evaluate_run
        from .probes import default_probes, probe_grid, save_grid

        done = [r for r in self.runs if r.has_adapter and r.state in ("done", "stopped")]
        if not done:
            return
        engine = ChatEngine(self.base.model, dtype=torch.float32)  # one base model for every run's adapter
        probes = self.probes if self.probes is not None else default_probes(done[0])
        for k, run in enumerate(done):
            if self._stop.is_set():
                return
            self.report(f"evaluating run {k + 1}/{len(done)}", k, len(done))
            try:
                self.results[run.id] = evaluate_run(run, engine=engine, probes=probes, settings=self.settings)
            except Exception as e:  # noqa: BLE001 - one bad run must not hide the others' numbers
                self.results[run.id] = {"error": f"{type(e).__name__}: {e}"}
            self._save()
        if probes and not self._stop.is_set():
            self.report("building the probe grid", len(done), len(done))
            # Each run's answers were kept by evaluate_run (probes.json): only the baseline column is new.
            self.probe_grid = probe_grid(done, probes, engine=engine, settings=self.settings)
            save_grid(self.probe_grid, self.path)

    def _set(self, state: str) -> None:
        self.state = state
        self._save()

    # --- results ---
    def comparison(self) -> list[dict]:
        """One row per combination: swept values, run, state, training figures and held-out accuracies."""
        # deferred: evaluate imports torch; a sweep is listed and planned without it
        from .evaluate import result_row

        rows = []
        for entry in self.entries:
            run = next((r for r in self.runs if r.id == entry["run"]), None)
            if run is None:
                rows.append({"run": None, **entry["values"], "state": entry["state"]})
            else:
                rows.append({**result_row(run, self.results.get(run.id)), "state": entry["state"]})
        return rows

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "state": self.state,
            "error": self.error,
            "preset": self.preset,
            "grid": self.grid,
            "base": self.base.to_dict(),
            "runs": [e["run"] for e in self.entries if e["run"]],
            "entries": self.comparison(),
            "started": getattr(self, "started", None),
            "updated": time.time(),
        }

    def _save(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path / RECORD, json.dumps(self.to_dict(), indent=2, default=str))


def load_sweep(sweep: str | Path) -> dict:
    """A sweep's record (sweep.json), by id under STUDIO_HOME/sweeps (a name, never a path) or by a `Path`."""
    path = sweep if isinstance(sweep, Path) else find("sweeps", sweep, RECORD)
    return json.loads((path / RECORD).read_text(encoding="utf-8"))


def sweep_grid(sweep_id: str) -> dict | None:
    """The probe grid a sweep built (grid.json in its folder), or None before it has one."""
    path = find("sweeps", sweep_id) / "grid.json"  # NotFound for a name that is no sweep here
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def list_sweeps() -> list[dict]:
    found = [load_sweep(p) for p in children("sweeps", RECORD)]
    return sorted(found, key=lambda s: s.get("started") or 0, reverse=True)


def _short(key: str) -> str:
    return {"learning_rate": "lr", "per_device_train_batch_size": "bs", "num_train_epochs": "ep",
            "gradient_accumulation_steps": "ga"}.get(key, key)


def value_text(value) -> str:
    """A swept value as a label shows it: 5e-05, not 5.0e-05; a list of losses as sigmoid+sft."""
    if isinstance(value, (list, tuple)):
        return "+".join(map(value_text, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _slug(text: str) -> str:
    return slug(text, "sweep")
