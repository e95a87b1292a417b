"""`TrainingJob`: one run (DPO, KTO, ORPO or SimPO: `RunConfig.objective`) on the job slot, streaming every logged metric to its run folder.

    job = TrainingJob(cfg).start()      # returns at once; training runs in a thread (JobBusy if the slot is taken)
    job.metrics.since(i)                # everything logged since index i, while it trains
    job.progress()                      # state, named phase, step/total, ETA (warm-up and evaluation left out)
    job.stop()                          # ends at the next step and still saves the adapter
    job.wait()
    TrainingJob.resume("RUN").start()   # a stopped, interrupted or failed run continues from its last checkpoint

Work is never silently lost or poisoned: an adapter snapshot is saved after the first step and
every `save_steps`, each only when the adapter's weights are finite; a loss that turns NaN or
infinite ends the run as `failed` at that step, keeping the last finite snapshot; a run folder
removed mid-run ends the run as `failed` instead of being recreated half-empty.

Each snapshot is also a full trainer checkpoint (adapter, optimizer, scheduler, RNG state; only the
newest is kept, under checkpoints/), and so is the step where a run is stopped. `TrainingJob.resume`
continues such a run in its own folder: the step count, the learning-rate schedule and metrics.jsonl
go on from the checkpoint (rows logged after it are dropped, so each step appears once), and
config.yaml records each resume. A run that ends done removes its checkpoint.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import statistics
import time
import traceback
from pathlib import Path

from transformers import TrainerCallback

from . import distributed
from .backends import choose_backend, planned_steps
from .config import Hardware, RunConfig, detect_hardware, resolve_for_hardware
from .data import FORMATS
from .errors import ConfigError, DataError, JobBusy, StudioError, user_message  # noqa: F401 - JobBusy re-exported
from .jobs import Job
from .jobs import active as active_job
from .memory import fit_run, free_gpu_gb, halve_batch
from .models import check_targets_in_config, load_for_training, load_tokenizer, resolve_model
from .objectives import objective
from .refcache import with_ref_cache
from .runs import LIVE_STATES, MetricsLog, Run, claim_run_dir, get_run, running_here, runs_root
from .training_data import data_findings, eval_source, examples_a_pair, load_run_data, to_trl


class RunFolderGone(StudioError):
    """The run folder was removed while the run was writing to it."""


class NonFiniteTraining(StudioError):
    """The loss or the adapter's weights became NaN or infinite."""


def check_run(cfg: RunConfig) -> None:
    """Everything a run needs, checked before anything is written: the model resolves and can be built here,
    the LoRA targets exist in it, and the data (and held-out data) yield pairs with its tokenizer.

    Raises a StudioError naming the problem; the CLI exits 2 and the web app shows it where Start was
    pressed, and no run folder exists yet.
    """

    choose_backend(cfg.backend, detect_hardware())  # backend unsloth without CUDA + Unsloth: refused here
    path = resolve_model(cfg.model)
    check_targets_in_config(path, cfg)
    _, train, _ = load_run_data(cfg, load_tokenizer(path))
    if not len(train):
        raise ConfigError(f"No training pairs are left in {cfg.data} once the held-out pairs are set aside.")


class TrainingJob(Job):
    kind = "train"

    def __init__(self, config: RunConfig, run_dir: str | Path | None = None, preset: str | None = None,
                 hardware: Hardware | None = None, label: str | None = None, callbacks: list | None = None,
                 explicit: set[str] | frozenset = frozenset()):
        super().__init__()
        self.hardware = hardware or detect_hardware()
        self.requested = config
        self.config = resolve_for_hardware(config, self.hardware)  # raises ConfigError before any folder exists
        if not self.config.data:
            raise ConfigError("No preference data: set data to a JSONL / JSON / CSV / Parquet file or a hub dataset id.")
        self.preset = preset
        self.explicit = set(explicit)  # sizing settings the user set (they win over fitting to the card)
        self.callbacks = list(callbacks or [])  # extra TrainerCallbacks (e.g. a fault injected by a test)
        self._label = label or preset or "run"  # the readable part of a new run id
        self._run_dir = Path(run_dir) if run_dir else None
        self.run = Run(self._run_dir or runs_root() / "(not started)")
        self.title = f"training {preset or 'run'}"
        self.metrics = MetricsLog(None)
        self.step = 0
        self.total_steps: int | None = None
        self.phases: list[str] = []  # every phase this job named, in order (the status file keeps only the last)
        self.last_snapshot: int | None = None  # the step of the newest adapter snapshot on disk
        self._step_seconds: list[float] = []  # time per optimizer step, evaluation time taken out
        self._last_step_end: float | None = None
        self._eval_seconds: list[float] = []  # duration of each held-out evaluation
        self._eval_started: float | None = None
        self._eval_in_step = 0.0
        self._eval_count = 0
        self._stopped_at: float | None = None
        self._trainer = None  # the trainer being run (saving gathers weights through its accelerator)
        self._resume: tuple[Path, int] | None = None  # (trainer checkpoint, its step) when this job resumes a run
        self._resumes: list[dict] = []  # config.yaml's record of every resume of this run

    @classmethod
    def resume(cls, run: "Run | str | Path", hardware: Hardware | None = None,
               callbacks: list | None = None) -> "TrainingJob":
        """A job that continues `run` in its own folder from its newest trainer checkpoint, with the settings it
        started with; `start()` it like any training (it takes the one slot).

        Refused with a StudioError naming the run and why: it is done, still running, diverged, has no
        checkpoint, or the data it trained on is gone or changed (the step count would no longer match).
        """
        run = run if isinstance(run, Run) else get_run(run)
        refusal = run.resume_refusal()
        if refusal:
            raise (JobBusy if run.progress()["state"] in LIVE_STATES else ConfigError)(refusal)
        checkpoint, step = run.checkpoint()
        cfg = run.config()
        _check_data_unchanged(run, cfg)
        job = cls(cfg, run_dir=run.path, preset=run.info.get("preset"), hardware=hardware, callbacks=callbacks)
        job._resume = (checkpoint, step)
        job.title = f"resuming run {run.id}"
        return job

    @classmethod
    def active(cls) -> "TrainingJob | None":
        """The training running in this process: the job on the slot, or the run a sweep is on now."""
        job = active_job()
        if isinstance(job, TrainingJob):
            return job
        current = getattr(job, "current", None)
        return current if isinstance(current, TrainingJob) and current.is_alive() else None

    def describe(self) -> dict:
        return {**super().describe(), "title": f"training run {self.run.id}", "run": self.run.id}

    # --- lifecycle ---
    def before_start(self) -> None:
        if self._resume is not None:
            return self._reopen()
        # Launched as several processes (torchrun, accelerate): the main one claims the folder, the rest share it.
        path = distributed.from_main(lambda: claim_run_dir(self._run_dir, self._label))
        self.run = Run(path, writes=distributed.is_main())
        running_here(self.run.path, True)  # until _run ends, whatever its last write managed
        try:
            self.title = f"training run {self.run.id}"
            self.metrics = MetricsLog(self.run.path / "metrics.jsonl" if self.run.writes else None)
            self.run.write_config(self.config, preset=self.preset, hardware=self.hardware.device_name,
                                  **distributed.describe())
            self._set("queued", started=self.started_at)
        except BaseException as e:
            running_here(self.run.path, False)
            if isinstance(e, OSError):  # a full or read-only disk: a refusal with a message, the slot freed
                raise StudioError(f"Cannot start run {self.run.id}: {failure_message(e)}") from None
            raise

    def _reopen(self) -> None:
        """A resume, once the slot is held: the same folder, metrics cut back to the checkpoint, the resume recorded."""
        checkpoint, step = self._resume
        refusal = self.run.resume_refusal()  # checked again: another page or process may have resumed it meanwhile
        if refusal:
            raise ConfigError(refusal)
        old = self.run.status()
        running_here(self.run.path, True)
        self.run.keep_metrics_until(step)
        self.metrics = MetricsLog(self.run.path / "metrics.jsonl")
        self._resumes = self.run.record_resume(step, checkpoint)
        self.step = self.last_snapshot = step
        self.total_steps = old.get("total_steps")
        earlier = old.get("earlier_seconds") or 0.0
        if old.get("started"):  # the time the earlier stints trained, for the runs table (not the days between)
            earlier += max((old.get("finished") or old.get("updated") or old["started"]) - old["started"], 0.0)
        self.title = f"training run {self.run.id}"
        self._set("queued", f"resuming from step {step}", started=self.started_at, finished=None, failure=None,
                  resumed_from=step, first_started=old.get("first_started") or old.get("started"),
                  earlier_seconds=earlier)

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stopped_at = time.time()
        super().stop()
        if self.state == "training" and not self.phase.startswith("evaluating"):
            self._set("training", "stopping after this step")  # said at once, not when the step ends

    def progress(self) -> dict:
        p = super().progress()
        return {**p, "state": self.state, "step": self.step, "total_steps": self.total_steps, "eta": self.eta(),
                "run": self.run.id}

    def eta(self) -> float | None:
        """Median recent step time x steps left, plus the planned evaluations at their measured length.

        The first two steps (warm-up: the first ETA, from them, was 1.7x the real time) and the time spent
        evaluating are left out of the step times, so the ETA neither starts too high nor climbs while the
        trainer evaluates. None until a step after the warm-up has been timed.
        """
        warm_up = 2
        if self.state not in ("training", "evaluating") or not self.total_steps:
            return None
        times = self._step_seconds[warm_up:] or (self._step_seconds if self.total_steps <= warm_up else [])
        if not times:
            return None
        left = max(self.total_steps - self.step, 0)
        eta = statistics.median(times[-10:]) * left
        every = self.config.eval_steps
        if self._eval_seconds and every:
            planned = left // every + (0 if self.total_steps % every == 0 else 1)
            eta += planned * statistics.median(self._eval_seconds)
        if self.phase.startswith("evaluating") and self._eval_seconds and self._eval_started:
            eta += max(statistics.median(self._eval_seconds) - (time.time() - self._eval_started), 0)
        return eta

    def _set(self, state: str, phase: str | None = None, **fields) -> None:
        self.state = state
        self.phase = phase or state
        if not self.phases or self.phases[-1] != self.phase:
            self.phases.append(self.phase)
        if not self.run.path.is_dir():  # never recreate a folder someone removed: it would lack its config
            return
        self.run.write_status(state=state, phase=self.phase, step=self.step, total_steps=self.total_steps,
                              error=self.error, pid=os.getpid(), **fields)

    def _run(self) -> None:
        trainer = None
        try:
            self._set("loading", "preparing data")
            trainer = self._build_trainer()
            if self._stop.is_set():
                self._set("stopped", "stopped before training began", finished=time.time())
                return
            self._set("training", "training")
            trainer = self._train_with_oom_retry(trainer)
            if self.error:  # a non-finite loss or a vanished folder stopped the trainer
                raise self._failure
            finished_all = self.total_steps is not None and self.step >= self.total_steps
            if finished_all or not self._stop.is_set():
                self._final_eval(trainer)
            self._set("saving", "saving the adapter")
            self._save_adapter(trainer, trainer.model)
            self.last_snapshot = self.step
            stopped = self._stop.is_set() and not finished_all
            if not stopped:  # nothing left to resume: the optimizer state would only take disk space
                shutil.rmtree(self.run.checkpoint_dir, ignore_errors=True)
            self._set("stopped" if stopped else "done", finished=time.time())
        except BaseException as e:  # noqa: BLE001 - the run must end in a state, whatever went wrong
            self.error = self.error or failure_message(e)
            self._end_failed(e, trainer)
        finally:
            running_here(self.run.path, False)

    def _end_failed(self, e: BaseException, trainer) -> None:
        """Record the failure as far as the disk allows: a write that fails here (a full disk) never keeps the run
        from ending `failed`, in this process (state, error) and for every reader (Run.progress)."""
        try:
            self._write_failure(e, trainer)
        except OSError as write_error:
            self.state = self.phase = "failed"
            self.error = f"{self.error} (its failure could not be written either: {write_error.strerror or write_error})"

    def _write_failure(self, e: BaseException, trainer) -> None:
        if self.run.writes and self.run.path.is_dir():
            try:
                (self.run.path / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
            except OSError:
                pass  # the state below matters more than the traceback
            # A sharded model cannot be gathered here: the other processes may not be failing with this one.
            if (trainer is not None and self.step > 0 and not isinstance(e, NonFiniteTraining)
                    and not distributed.sharded(trainer)):
                try:  # never lose work: keep what was trained up to the failure, if it is sound
                    if adapter_is_finite(trainer.model):
                        save_adapter(trainer.model, self.run.adapter_dir)
                        self.last_snapshot = self.step
                except Exception:  # noqa: BLE001
                    pass
        self._set("failed", finished=time.time(), failure=type(e).__name__)

    def _train_with_oom_retry(self, trainer):
        """On a CUDA out-of-memory error before any step: halve the per-device batch (doubling accumulation, so
        the recipe's effective batch stays) and try once more, saying so in the run's status and log."""
        import torch

        resume = str(self._resume[0]) if self._resume else None
        try:
            trainer.train(resume_from_checkpoint=resume)
            return trainer
        except torch.OutOfMemoryError as e:
            halved = halve_batch(self.config.per_device_train_batch_size, self.config.gradient_accumulation_steps)
            resumed_at = self._resume[1] if self._resume else 0
            if not self.hardware.cuda or self.step > resumed_at or halved is None or distributed.world_size() > 1:
                raise  # several processes: one retrying alone would leave the others waiting
            note = (f"CUDA ran out of memory with {self.config.per_device_train_batch_size} pairs a device ({e}); "
                    f"retrying once with {halved[0]} pairs x {halved[1]} accumulation")
            (self.run.path / "run.log").open("a", encoding="utf-8").write(note + "\n")
            self.config = self.config.replace(per_device_train_batch_size=halved[0],
                                              gradient_accumulation_steps=halved[1])
            del trainer
            torch.cuda.empty_cache()
            self._oom_retry = True  # keep the halved batch: no refitting to the card
            self._set("loading", "retrying with half the batch after running out of GPU memory", note=note)
            trainer = self._build_trainer()
            self._set("training", "training")
            trainer.train(resume_from_checkpoint=resume)
            return trainer

    def _save_adapter(self, trainer, model) -> None:
        """Every process calls it (weights sharded across processes are gathered first); the main one writes."""
        model, state_dict = distributed.for_saving(trainer, model)
        if self.run.writes:
            save_adapter(model, self.run.adapter_dir, state_dict=state_dict)

    def _fail(self, error: StudioError, control) -> None:
        self.error, self._failure = str(error), error
        control.should_training_stop = True

    def _final_eval(self, trainer) -> None:
        if trainer.eval_dataset is None:
            return
        evals = [m for m in self.metrics.since(0) if "eval_loss" in m]
        if not evals or evals[-1]["step"] != self.step:
            self._set("training", "final evaluation on the held-out pairs")  # named before its first batch
            trainer.evaluate()

    def _choose_backend_and_size(self, cfg: RunConfig, data, train_pairs: int) -> tuple[RunConfig, dict]:
        """Unsloth or transformers+PEFT for this run, and on CUDA the per-device batch, accumulation and
        checkpointing fitted to the free GPU memory (the recipe's effective batch kept; explicit settings win).
        What was chosen and why is recorded in config.yaml."""

        if distributed.world_size() > 1 and cfg.backend == "auto":
            backend, why = "transformers", "several processes: Unsloth's multi-GPU training is not tested with the studio"
        else:
            backend, why = choose_backend(cfg.backend, self.hardware, _planned(cfg, train_pairs))
        started_with = self.run.info.get("chosen_backend") if self._resume else None
        if started_with in ("transformers", "unsloth") and started_with != backend:
            backend, why = started_with, f"the backend run {self.run.id} started with (resumed)"
        choice: dict = {"chosen_backend": backend, "backend_reason": why}
        if self.hardware.cuda and not getattr(self, "_oom_retry", False) and not self._resume:
            free = free_gpu_gb()
            if free is not None:
                fitted, fit = fit_run(self.requested, backend, free, data.report.to_dict().get("tokens"),
                                      explicit=self.explicit)
                if fit is not None:
                    cfg = self.config = cfg.replace(**fit.settings())
                    choice["fit"] = fit.to_dict()
        return cfg, choice

    def _build_trainer(self):
        cfg = self.config
        tokenizer = load_tokenizer(resolve_model(cfg.model))
        data, train, held_out = load_run_data(cfg, tokenizer)
        self.run.write_json("data.json", {**data.report.to_dict(), "train_pairs": len(train),
                                          "eval_pairs": len(held_out), "eval_source": eval_source(cfg),
                                          "findings": data_findings(cfg, data, train, held_out, tokenizer)})
        self._set("loading", "loading the model")
        # Decided once, by the main process: every process must fit the same batch and take the same steps.
        examples = len(train) * examples_a_pair(cfg.objective, train.unpaired)
        cfg, choice = distributed.from_main(lambda: self._choose_backend_and_size(cfg, data, examples))
        self.config = cfg
        from transformers import set_seed

        set_seed(cfg.seed)  # the adapter's initial weights too (PEFT draws them before the Trainer seeds)
        loaded = load_for_training(cfg, self.hardware, backend=choice["chosen_backend"])
        resumed = {"resumed": self._resumes} if self._resumes else {}
        self.run.write_config(self.config, preset=self.preset, **loaded.backend, **choice, **resumed,
                              **distributed.describe())
        self.eval_pairs = len(held_out)
        trainer = build_trainer(cfg, loaded, to_trl(train, cfg), to_trl(held_out, cfg) if len(held_out) else None,
                                output_dir=self.run.checkpoint_dir, callbacks=[_Recorder(self), *self.callbacks],
                                on_phase=lambda text: self._set("loading", text))
        if self._resume and cfg.init_adapter:
            _load_trained_adapter(trainer.model, self._resume[0])
        # Again with what accelerate set up: its process count shows whether the processes really trained together.
        # ref_cache: per split, whether the reference log-probs came from studio.refcache or were computed.
        cached = {"ref_cache": trainer.ref_cache} if getattr(trainer, "ref_cache", None) else {}
        self.run.write_config(self.config, preset=self.preset, **loaded.backend, **choice, **resumed, **cached,
                              **distributed.describe(trainer))
        self._trainer = trainer
        return trainer


def _check_data_unchanged(run: Run, cfg: RunConfig) -> None:
    """The data a run trained on is still there and yields as many training pairs as when it started.

    The checkpoint's step count and data order are only right for the same pairs; a changed file would
    resume onto other data without a word.
    """

    for key in ("data", "eval_data"):
        source = getattr(cfg, key)
        if source and not Path(source).exists() and (Path(source).suffix.lower() in FORMATS or os.sep in source):
            raise DataError(f"Run {run.id} trained on {source} ({key}), which is gone: put the file back at that path "
                            "to resume the run, or start a new run on other data.")
    _, train, _ = load_run_data(cfg, load_tokenizer(resolve_model(cfg.model)))
    recorded = (run.read_json("data.json") or {}).get("train_pairs")
    if recorded is not None and len(train) != recorded:
        raise DataError(f"Run {run.id} trained on {recorded} pairs of {cfg.data}, but it now yields {len(train)}: the "
                        "file changed, so the checkpoint's place in the data no longer fits. Start a new run on it.")


def _load_trained_adapter(model, checkpoint: Path) -> None:
    """The checkpoint's trained ("default") adapter, loaded into `model`.

    For a run that continues another run's adapter, TRL keeps a frozen "ref" copy beside it, and the
    checkpoint then holds "default" at its top and "ref" in a subfolder; transformers' resume loads
    only the subfolders, which would leave "default" at its starting weights.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(checkpoint / "adapter_model.safetensors")), adapter_name="default")


def failure_message(e: BaseException) -> str:
    """Why a run failed, in words a user can act on."""
    message = user_message(e)
    if message is not None:
        return message
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return (f"The disk is full ({e.strerror}{': ' + str(e.filename) if e.filename else ''}): free some space "
                "where STUDIO_HOME lives, then resume the run from its last checkpoint.")
    if type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower():
        return (f"Out of memory: {e}. Lower per_device_train_batch_size (raise gradient_accumulation_steps to keep "
                "the effective batch) or max_length, or use method qlora on a GPU.")
    return f"{type(e).__name__}: {e}"


def _planned(cfg: RunConfig, train_pairs: int) -> int:
    return planned_steps(cfg.max_steps, cfg.num_train_epochs, train_pairs,
                         cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps)


class UnknownTrlField(ConfigError):
    """A setting marked trl= names a field the objective's TRL config class does not have."""


def _reads_part_of(cfg: RunConfig, train_examples: int | None) -> bool:
    """Whether a run stops (max_steps) before it has read each of its `train_examples` once."""
    if not train_examples or not cfg.max_steps or cfg.max_steps <= 0:
        return False
    per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * distributed.world_size()
    return cfg.max_steps * per_step < train_examples


def trainer_config(cfg: RunConfig, output_dir: Path, has_eval: bool, disable_tqdm: bool = True,
                   train_examples: int | None = None):
    """The objective's TRL config (DPOConfig, KTOConfig, ORPOConfig or CPOConfig): every setting RunConfig shares
    with it (`trl_kwargs()`, under TRL's names), what the objective fixes, and what the studio fixes for every run.

    A field the class does not have is refused by name rather than left to a TypeError from TRL's dataclass.
    """

    obj = objective(cfg.objective)
    _, config_class = obj.classes()
    shared = cfg.trl_kwargs()
    shared.update(bf16=bool(cfg.bf16), gradient_checkpointing=bool(cfg.gradient_checkpointing))
    shared.update(obj.fixed)
    if obj.reference and distributed.world_size() == 1 and not _reads_part_of(cfg, train_examples):
        # The base model's log-probabilities of the training answers, computed once before the first step (and read
        # from studio.refcache when this model, template, data and length were seen before) instead of every step.
        # Not across processes: TRL's precomputation then goes through a datasets cache file of the main process's
        # temporary folder, which the other processes cannot open (measured: rank 1 failed on it under torchrun).
        # Not when the run stops before it has read the data once (max_steps): the pass would score every example
        # for a run that reads a few (a 2-step run on 162 pairs spent most of its time there).
        shared["precompute_ref_log_probs"] = True
    fixed = dict(
        output_dir=str(output_dir),
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        fp16=False,
        # On a machine without CUDA say so: else accelerate sees no multi-process (MULTI_CPU) setup under torchrun.
        use_cpu=not detect_hardware().cuda,
        eval_strategy="steps" if has_eval and cfg.eval_steps > 0 else "no",
        eval_steps=cfg.eval_steps or None,
        save_strategy="no",  # the job decides when (its snapshots, a stop); the Trainer then writes the checkpoint
        save_total_limit=1,  # only the newest checkpoint: it is what resume needs
        report_to="none",
        disable_tqdm=disable_tqdm,
        dataloader_num_workers=0,
    )
    known = obj.config_fields()
    missing = sorted(set(shared) - known)
    if missing:
        raise UnknownTrlField(f"{config_class.__name__} (objective {cfg.objective}) has no field "
                              f"{', '.join(missing)}: the setting's trl= metadata names a field TRL does not take.")
    return config_class(**fixed, **shared)


def dpo_config(cfg: RunConfig, output_dir: Path, has_eval: bool, disable_tqdm: bool = True):
    """TRL's DPOConfig for `cfg` (the trainer config of objective dpo)."""
    return trainer_config(cfg.replace(objective="dpo"), output_dir, has_eval, disable_tqdm)


def build_trainer(cfg: RunConfig, loaded, train_dataset, eval_dataset, output_dir: Path, callbacks=(),
                  on_phase=None):
    obj = objective(cfg.objective)
    if loaded.backend["backend"] == "unsloth" and obj.name == "dpo":
        try:
            from unsloth import PatchDPOTrainer

            PatchDPOTrainer()
        except ImportError:
            pass  # newer Unsloth patches TRL on import
    from transformers.trainer_callback import PrinterCallback


    trainer_class, _ = obj.classes()
    args = trainer_config(cfg, output_dir, eval_dataset is not None, train_examples=len(train_dataset))
    if obj.reference:
        # The held-out reference once, where the training one is not precomputed: DPO only (the switch per batch
        # is DPOTrainer's), and not across processes, for the reason trainer_config gives.
        eval_only = (obj.name == "dpo" and eval_dataset is not None and args.eval_strategy != "no"
                     and not args.precompute_ref_log_probs and distributed.world_size() == 1)
        trainer_class = with_ref_cache(trainer_class, cfg, on_phase, eval_only=eval_only)
    kwargs = dict(
        model=loaded.model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=loaded.tokenizer,
        peft_config=loaded.peft_config,
        callbacks=list(callbacks),
    )
    if obj.reference:
        kwargs["ref_model"] = None  # the frozen base (adapter off) is the reference: no second copy of the weights
    trainer = trainer_class(**kwargs)
    # With tqdm off the Trainer prints every log dict to stdout; the metrics log is the one stream we keep.
    trainer.remove_callback(PrinterCallback)
    return trainer


def adapter_is_finite(model) -> bool:
    """True when every trainable (adapter) weight is a finite number: a NaN snapshot is worse than none."""
    import torch

    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


def save_adapter(model, adapter_dir: Path, state_dict: dict | None = None) -> None:
    """Save only the trained adapter ("default"), atomically: a crash mid-save leaves the previous snapshot.

    TRL may hold a frozen copy named "ref" beside it, which is left out. `state_dict`: the full weights where
    they were sharded across processes (studio.distributed.for_saving).
    """

    if not adapter_dir.parent.is_dir():
        raise RunFolderGone(f"The run folder {adapter_dir.parent} was removed while the run was saving to it.")
    tmp = adapter_dir.with_name(adapter_dir.name + ".tmp")
    old = adapter_dir.with_name(adapter_dir.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), selected_adapters=["default"],
                          **({"state_dict": state_dict} if state_dict is not None else {}))
    shutil.rmtree(old, ignore_errors=True)
    if adapter_dir.exists():
        adapter_dir.rename(old)
    tmp.rename(adapter_dir)
    shutil.rmtree(old, ignore_errors=True)


def _folder_gone(job: TrainingJob, step: int, control) -> bool:
    """True (and the run failing) when the run folder was removed: nothing more can be written there."""
    if job.run.path.is_dir() or not job.run.writes:  # another process of a run (maybe on another node) writes nothing
        return False
    job._fail(RunFolderGone(f"The run folder {job.run.path} was removed while the run trained (at step {step}); "
                            "nothing more can be saved."), control)
    return True


class _Recorder(TrainerCallback):
    """Pushes every logged dict to the job's metrics log, names the phase, guards the weights, checks stop."""

    def __init__(self, job: TrainingJob):
        self.job = job

    def on_train_begin(self, args, state, control, **kwargs):
        self.job.total_steps = state.max_steps
        self.job.step = state.global_step  # the checkpoint's step when resumed
        self.job._last_step_end = time.time()
        self.job._set("training", "training")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        job, now = self.job, time.time()
        if _folder_gone(job, state.global_step, control):
            return
        bad = {k: v for k, v in logs.items() if k in ("loss", "grad_norm", "eval_loss")
               and isinstance(v, float) and not math.isfinite(v)}
        job.metrics.append({"step": state.global_step, "time": now, **logs})
        if bad:
            kept = (f"the adapter on disk is the last finite snapshot (step {job.last_snapshot})"
                    if job.last_snapshot else "no finite snapshot was saved before it")
            key, value = next(iter(bad.items()))
            job._fail(NonFiniteTraining(
                f"{key} became {value} at step {state.global_step}: training diverged; {kept}. "
                "Lower the learning rate or beta, or check the data for empty or huge answers."), control)

    def on_evaluate(self, args, state, control, **kwargs):
        job = self.job
        if job._eval_started is not None:
            seconds = time.time() - job._eval_started
            job._eval_seconds.append(seconds)
            job._eval_in_step += seconds
            job._eval_started = None
        job._set("training", "stopping after this step" if job.stopping() else "training")

    def on_prediction_step(self, args, state, control, **kwargs):
        job = self.job
        if job._eval_started is None:
            job._eval_started = time.time()
            job._eval_count += 1
            job._eval_batch = 0
        job._eval_batch += 1
        pairs = getattr(job, "eval_pairs", 0)
        done = min(job._eval_batch * args.per_device_eval_batch_size, pairs)
        if job._eval_batch == 1 or done == pairs or job._eval_batch % 2 == 0:
            then = ", then stopping" if job.stopping() else ""
            final = " (final evaluation)" if job.total_steps and state.global_step >= job.total_steps else ""
            job._set("training", f"evaluating {done}/{pairs} held-out pairs{final}{then}")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        job, now = self.job, time.time()
        job.step = state.global_step
        if job._last_step_end is not None:
            job._step_seconds.append(max(now - job._last_step_end - job._eval_in_step, 0.0))
        job._last_step_end, job._eval_in_step = now, 0.0
        gone = _folder_gone(job, job.step, control)
        # Several processes leave the loop at the same step, whichever of them failed or was told to stop.
        if distributed.any_process(gone or bool(job.error) or job._stop.is_set()) and not (gone or job.error):
            job.stop()
        if gone or job.error:
            return
        snapshot = model is not None and (job.step == 1 or (job.config.save_steps and job.step % job.config.save_steps == 0))
        if job._stop.is_set():
            control.should_training_stop = True
            job._set("training", "stopping after this step")
            # A checkpoint where it stopped, so a resume repeats no step (the job's _run saves the adapter).
            control.should_save = model is not None and adapter_is_finite(model)
        elif snapshot:
            if not distributed.any_process(not adapter_is_finite(model)):  # sharded weights: each checks its shard
                job._save_adapter(job._trainer, model)
                job.last_snapshot = job.step
                control.should_save = True  # the Trainer then writes the full checkpoint: optimizer, scheduler, RNG
            else:
                kept = f"step {job.last_snapshot}" if job.last_snapshot else "none was saved"
                job._fail(NonFiniteTraining(f"The adapter's weights became NaN or infinite at step {job.step}: "
                                            f"training diverged; the last finite snapshot is kept ({kept})."), control)
                return
        if job.run.path.is_dir():
            job.run.write_status(step=job.step, total_steps=job.total_steps)
