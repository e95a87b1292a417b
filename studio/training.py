"""`TrainingJob`: one DPO run in a background thread, streaming every logged metric to its run folder.

    job = TrainingJob(cfg).start()      # returns at once; training runs in a thread
    job.metrics.since(i)                # everything logged since index i, while it trains
    job.stop()                          # ends at the next step and still saves the adapter
    job.wait()
"""

from __future__ import annotations

import threading
import time
import traceback
from pathlib import Path

from transformers import TrainerCallback

from .config import ConfigError, Hardware, RunConfig, detect_hardware, resolve_for_hardware
from .runs import MetricsLog, Run, new_run_id, runs_root

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{}\n\n### Response:\n"
)


class JobBusy(RuntimeError):
    """Raised when a second job is started while one runs in this process."""


class TrainingJob:
    # One job per process: two trainings would fight over the same cores or GPU memory.
    _active: "TrainingJob | None" = None
    _active_lock = threading.Lock()

    def __init__(self, config: RunConfig, run_dir: str | Path | None = None, preset: str | None = None,
                 hardware: Hardware | None = None):
        self.hardware = hardware or detect_hardware()
        self.requested = config
        self.config = resolve_for_hardware(config, self.hardware)  # raises ConfigError before any folder exists
        if not self.config.data:
            raise ConfigError("No preference data: set data to a JSONL / JSON / CSV / Parquet file or a hub dataset id.")
        self.preset = preset
        self.run = Run(Path(run_dir) if run_dir else runs_root() / new_run_id(preset or "run"))
        self.metrics = MetricsLog(None)
        self.state = "queued"
        self.error: str | None = None
        self.step = 0
        self.total_steps: int | None = None
        self.started_at: float | None = None
        self.first_log_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- control ---
    def start(self) -> "TrainingJob":
        with TrainingJob._active_lock:
            active = TrainingJob._active
            if active is not None and active.is_alive():
                raise JobBusy(f"A training job is already running: {active.run.id} ({active.state}). Stop it first.")
            TrainingJob._active = self
        self.run.create()
        self.metrics = MetricsLog(self.run.path / "metrics.jsonl")
        self.started_at = time.time()
        self.run.write_config(self.config, preset=self.preset, hardware=self.hardware.device_name)
        self._set("queued", started=self.started_at)
        self._thread = threading.Thread(target=self._main, name=f"train-{self.run.id}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def wait(self, timeout: float | None = None) -> str:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @classmethod
    def active(cls) -> "TrainingJob | None":
        return cls._active

    def progress(self) -> dict:
        elapsed = time.time() - self.started_at if self.started_at else 0.0
        eta = None
        if self.total_steps and self.step and self.first_log_at:
            per_step = (time.time() - self.first_log_at) / max(self.step - 1, 1)
            eta = per_step * (self.total_steps - self.step)
        return {"state": self.state, "step": self.step, "total_steps": self.total_steps, "elapsed": elapsed,
                "eta": eta, "error": self.error, "run": self.run.id}

    # --- the thread ---
    def _set(self, state: str, **fields) -> None:
        self.state = state
        self.run.write_status(state=state, step=self.step, total_steps=self.total_steps, error=self.error,
                              pid=_pid(), **fields)

    def _main(self) -> None:
        trainer = None
        try:
            self._set("loading")
            trainer = self._build_trainer()
            if self._stop.is_set():
                raise _StoppedEarly
            self._set("training")
            trainer.train()
            if not self._stop.is_set():
                self._final_eval(trainer)
            self._set("saving")
            save_adapter(trainer.model, self.run.adapter_dir)
            self._set("stopped" if self._stop.is_set() else "done", finished=time.time())
        except _StoppedEarly:
            self._set("stopped", finished=time.time())
        except BaseException as e:  # noqa: BLE001 - the run must end in a state, whatever went wrong
            self.error = _user_message(e)
            (self.run.path / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
            if trainer is not None and self.step > 0:
                try:  # never lose work: keep what was trained up to the failure
                    save_adapter(trainer.model, self.run.adapter_dir)
                except Exception:  # noqa: BLE001
                    pass
            self._set("failed", finished=time.time())
        finally:
            with TrainingJob._active_lock:
                if TrainingJob._active is self:
                    TrainingJob._active = None

    def _final_eval(self, trainer) -> None:
        if trainer.eval_dataset is None:
            return
        evals = [m for m in self.metrics.since(0) if "eval_loss" in m]
        if not evals or evals[-1]["step"] != self.step:
            trainer.evaluate()

    def _build_trainer(self):
        from .models import load_for_training, load_tokenizer, resolve_model

        cfg = self.config
        tokenizer = load_tokenizer(resolve_model(cfg.model))
        data, train, held_out = load_run_data(cfg, tokenizer)
        self.run.write_json("data.json", {**data.report.to_dict(), "train_pairs": len(train), "eval_pairs": len(held_out),
                                          "eval_source": cfg.eval_data or f"{cfg.eval_fraction:.0%} of data (seed {cfg.seed})"})
        loaded = load_for_training(cfg, self.hardware)
        self.run.write_config(self.config, preset=self.preset, **loaded.backend)
        return build_trainer(cfg, loaded, to_trl(train, cfg), to_trl(held_out, cfg) if len(held_out) else None,
                             output_dir=self.run.path / "checkpoints", callbacks=[_Recorder(self)])


def load_run_data(cfg: RunConfig, tokenizer):
    """(all pairs of `data`, train pairs, held-out pairs) exactly as a run with this config uses them.

    The held-out pairs are `eval_data` when set, else a seeded `eval_fraction` of `data`; training
    and evaluation both call this, so an evaluation scores the very pairs training held out.
    """
    from .data import Columns, load_preferences

    columns = Columns(cfg.prompt_col, cfg.chosen_col, cfg.rejected_col, cfg.system_col)
    data = load_preferences(cfg.data, columns, tokenizer=tokenizer, max_length=cfg.max_length)
    if cfg.eval_data:
        train, held_out = data, load_preferences(cfg.eval_data, columns, tokenizer=tokenizer, max_length=cfg.max_length)
    else:
        train, held_out = data.split(cfg.eval_fraction, cfg.seed)
    return data, train, held_out


class _StoppedEarly(Exception):
    pass


def _pid() -> int:
    import os

    return os.getpid()


def _user_message(e: BaseException) -> str:
    from .data import DataError
    from .models import ModelError

    if isinstance(e, (DataError, ModelError, ConfigError)):
        return str(e)
    if type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower():
        return f"Out of memory: {e}. Lower per_device_train_batch_size or max_length, or use method qlora on a GPU."
    return f"{type(e).__name__}: {e}"


def to_trl(pairs, cfg: RunConfig):
    """The normalised pairs as a datasets.Dataset in the form the prompt template asks for."""
    if cfg.prompt_template == "chat":
        return pairs.to_dataset()
    from datasets import Dataset

    # The Handbook's recipe: an Alpaca instruction prompt and plain-text answers (TRL appends EOS).
    rows = []
    for p in pairs.pairs:
        users = [m["content"] for m in p["prompt"] if m["role"] == "user"]
        rows.append({"prompt": ALPACA_TEMPLATE.format(users[-1]), "chosen": p["chosen"][-1]["content"],
                     "rejected": p["rejected"][-1]["content"]})
    return Dataset.from_list(rows)


def dpo_config(cfg: RunConfig, output_dir: Path, has_eval: bool, disable_tqdm: bool = True):
    from trl import DPOConfig

    return DPOConfig(
        output_dir=str(output_dir),
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        optim=cfg.optim,
        seed=cfg.seed,
        beta=cfg.beta,
        loss_type=[cfg.loss_type],
        max_length=cfg.max_length,
        bf16=bool(cfg.bf16),
        fp16=False,
        gradient_checkpointing=bool(cfg.gradient_checkpointing),
        logging_steps=cfg.logging_steps,
        eval_strategy="steps" if has_eval and cfg.eval_steps > 0 else "no",
        eval_steps=cfg.eval_steps or None,
        save_strategy="no",  # the job saves the adapter itself, without the frozen "ref" copy
        report_to="none",
        disable_tqdm=disable_tqdm,
        dataloader_num_workers=0,
    )


def build_trainer(cfg: RunConfig, loaded, train_dataset, eval_dataset, output_dir: Path, callbacks=()):
    if loaded.backend["backend"] == "unsloth":
        try:
            from unsloth import PatchDPOTrainer

            PatchDPOTrainer()
        except ImportError:
            pass  # newer Unsloth patches TRL on import
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOTrainer

    trainer = DPOTrainer(
        model=loaded.model,
        ref_model=None,  # the frozen base (adapter off) is the reference: no second copy of the weights
        args=dpo_config(cfg, output_dir, eval_dataset is not None),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=loaded.tokenizer,
        peft_config=loaded.peft_config,
        callbacks=list(callbacks),
    )
    # With tqdm off the Trainer prints every log dict to stdout; the metrics log is the one stream we keep.
    trainer.remove_callback(PrinterCallback)
    return trainer


def save_adapter(model, adapter_dir: Path) -> None:
    """Save only the trained adapter ("default"): TRL may hold a frozen copy named "ref" beside it."""
    import shutil

    tmp = adapter_dir.with_name(adapter_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), selected_adapters=["default"])
    shutil.rmtree(adapter_dir, ignore_errors=True)
    tmp.rename(adapter_dir)


class _Recorder(TrainerCallback):
    """Pushes every logged dict to the job's metrics log and checks the stop flag after each step."""

    def __init__(self, job: TrainingJob):
        self.job = job

    def on_train_begin(self, args, state, control, **kwargs):
        self.job.total_steps = state.max_steps
        self.job._set("training")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        now = time.time()
        if self.job.first_log_at is None:
            self.job.first_log_at = now
        self.job.metrics.append({"step": state.global_step, "time": now, **logs})

    def on_step_end(self, args, state, control, model=None, **kwargs):
        job = self.job
        job.step = state.global_step
        if job._stop.is_set():
            control.should_training_stop = True
        elif job.config.save_steps and state.global_step % job.config.save_steps == 0 and model is not None:
            save_adapter(model, job.run.adapter_dir)
        job.run.write_status(step=job.step, total_steps=job.total_steps)
