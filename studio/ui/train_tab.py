"""Train tab: a preset fills every RunConfig field; Start and Stop drive a TrainingJob; a timer follows the run.

Widgets live in a dict keyed by RunConfig field name and handlers take and return values by that
name, so a new RunConfig field needs one widget here and nothing else. What the tab shows comes
from the engine: the active `TrainingJob` of this process, else the run folder on disk, so a
reload, a second browser or a restarted server sees the same run.
"""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr

from studio.config import (
    ALL_PROJECTIONS, LOSS_TYPES, PROMPT_TEMPLATES, SCHEDULERS, ConfigError, RunConfig, detect_hardware,
    field_names, load_preset, preset_names, resolve_for_hardware,
)
from studio.data import FORMATS, Columns, load_preferences
from studio.models import EMBEDDED
from studio.runs import LIVE_STATES, Run, list_runs, runs_root
from studio.training import TrainingJob

from studio import memory

from . import charts
from .common import duration, escape, user_message

POLL_SECONDS = 0.5  # a logged metric reaches the charts within this plus one round trip (< 2 s)
AUTO = "auto"  # widget value for the fields the engine fills from the hardware (None in RunConfig)
OPTIONAL = {"eval_data", "prompt_col", "chosen_col", "rejected_col", "system_col", "optim", "bf16",
            "gradient_checkpointing"}
OPTIMIZERS = (AUTO, "adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adamw_8bit", "paged_adamw_8bit")
CHART_IDS = {"loss": "loss-chart", "margins": "margins-chart", "accuracy": "accuracy-chart",
             "rewards": "rewards-chart", "logps": "logps-chart"}

STATUS_CSS = """
.ds-status { font-size: 14px; padding: 10px 12px; border: 1px solid var(--border-color-primary);
  border-radius: 8px; background: var(--block-background-fill); }
.ds-status .ds-line { display: flex; flex-wrap: wrap; gap: 6px 14px; align-items: baseline; }
.ds-state { font-weight: 700; text-transform: uppercase; letter-spacing: .04em; padding: 1px 8px;
  border-radius: 999px; background: #e0e7ff; color: #3730a3; font-size: 12px; }
.ds-state.done { background: #dcfce7; color: #166534; } .ds-state.failed, .ds-state.interrupted
  { background: #fee2e2; color: #991b1b; } .ds-state.stopped { background: #fef3c7; color: #92400e; }
.ds-bar { height: 8px; border-radius: 4px; background: var(--border-color-primary); margin-top: 8px; overflow: hidden; }
.ds-bar > div { height: 100%; background: linear-gradient(90deg, #6366f1, #14b8a6); transition: width .4s; }
.ds-error { margin-top: 8px; color: #b91c1c; white-space: pre-wrap; }
.ds-muted { color: var(--body-text-color-subdued); }
"""


# --- widget values <-> RunConfig ----------------------------------------------------------------


def widget_value(name: str, value):
    """A RunConfig value as its widget shows it."""
    if name in ("optim", "bf16", "gradient_checkpointing"):
        if value is None:
            return AUTO
        return str(value).lower() if isinstance(value, bool) else value
    if value is None:
        return ""
    return list(value) if isinstance(value, (list, tuple)) else value


def config_from_widgets(values: dict) -> RunConfig:
    """Widget values by field name -> a validated RunConfig (ConfigError names the bad field)."""
    changes = {}
    for name, value in values.items():
        if isinstance(value, str):
            value = value.strip()
        if name in OPTIONAL and value in (None, "", AUTO):
            value = None
        changes[name] = value
    return RunConfig.from_dict(changes, origin="the form")


def qlora_problem() -> str | None:
    """Why QLoRA cannot run on this machine, in the engine's words; None when it can."""
    try:
        resolve_for_hardware(RunConfig(method="qlora"))
    except ConfigError as e:
        return str(e)
    return None


def card_markdown(preset) -> str:
    card = preset.card or {}
    lines = [f"### {card.get('title') or preset.name}", str(card.get("description", "")).strip()]
    facts = [(label, card.get(key)) for label, key in
             (("CPU time", "time_cpu"), ("GPU time", "time_gpu"), ("Memory", "memory"))]
    lines.append(" · ".join(f"**{label}:** {value}" for label, value in facts if value))
    prompts = card.get("sample_prompts") or []
    if prompts:
        lines.append("**Try in Chat:** " + " · ".join(f"“{p}”" for p in prompts))
    return "\n\n".join(line for line in lines if line)


# --- following a run ----------------------------------------------------------------------------


def progress_of(run_id: str, job: TrainingJob | None) -> dict:
    """The same dict as TrainingJob.progress(), for the live job or from a run folder."""
    if job is not None and job.run.id == run_id:
        return job.progress()
    status = Run(runs_root() / run_id).status()
    state, started = status.get("state", "unknown"), status.get("started")
    live = state in LIVE_STATES
    end = time.time() if live else (status.get("finished") or status.get("updated"))
    elapsed = end - started if started and end else None
    step, total = status.get("step") or 0, status.get("total_steps")
    eta = elapsed / step * (total - step) if live and elapsed and step and total else None
    return {"state": state, "step": step, "total_steps": total, "elapsed": elapsed, "eta": eta,
            "error": status.get("error"), "run": run_id}


def status_html(progress: dict | None, note: str = "") -> str:
    if not progress:
        body = ('<div class="ds-line"><span class="ds-state">idle</span><span>No run yet: pick a preset, '
                "check your data in the Data tab if you have your own, and press Start.</span></div>")
        return f'<div class="ds-status">{body}{_note(note)}</div>'
    state = progress["state"]
    step, total = progress.get("step") or 0, progress.get("total_steps")
    parts = [f'<span class="ds-state {escape(state)}">{escape(state)}</span>',
             f'<span>run <code>{escape(progress["run"])}</code></span>',
             f"<span>step <b>{step}</b>/{total if total else '?'}</span>",
             f"<span>elapsed {duration(progress.get('elapsed'))}</span>"]
    if state in LIVE_STATES:
        parts.append(f"<span>ETA {duration(progress.get('eta')) if progress.get('eta') is not None else '…'}</span>")
    pct = 100 if state == "done" else (100 * step / total if total else 0)
    bar = f'<div class="ds-bar"><div style="width:{pct:.0f}%"></div></div>'
    error = f'<div class="ds-error">{escape(progress["error"])}</div>' if progress.get("error") else ""
    return f'<div class="ds-status"><div class="ds-line">{"".join(parts)}</div>{bar}{error}{_note(note)}</div>'


def _note(note: str) -> str:
    return f'<div class="ds-muted" style="margin-top:6px">{escape(note)}</div>' if note else ""


def error_html(message: str) -> str:
    return f'<div class="ds-status"><span class="ds-state failed">not started</span><div class="ds-error">{escape(message)}</div></div>'


def _newest_run_id() -> str | None:
    runs = list_runs()
    return runs[0].id if runs else None


def _check_data(cfg: RunConfig) -> None:
    """Read local data files now (no tokenizer: fast) so a missing file or unknown layout is refused at Start."""
    columns = Columns(cfg.prompt_col, cfg.chosen_col, cfg.rejected_col, cfg.system_col)
    for source in (cfg.data, cfg.eval_data):
        # A hub id is left to the run itself: fetching it here would hold up the page.
        if source and (Path(source).exists() or Path(source).suffix.lower() in FORMATS):
            load_preferences(source, columns)


# --- the tab --------------------------------------------------------------------------------------


class TrainTab:
    def __init__(self, default_preset: str = "cpu-quickstart"):
        preset = load_preset(default_preset)
        cfg = self.default_config = preset.config
        self.hardware = detect_hardware()
        self.qlora_problem = qlora_problem()
        self.fields: dict[str, gr.components.Component] = {}

        with gr.Tab("Train", id="train") as self.tab:
            with gr.Row(equal_height=False):
                with gr.Column(scale=2, min_width=260):
                    self.preset = gr.Dropdown(
                        [(self._preset_label(n), n) for n in preset_names()], value=preset.name, label="Preset",
                        info="fills every setting below", elem_id="preset")
                with gr.Column(scale=5):
                    self.card = gr.Markdown(card_markdown(preset), elem_classes="ds-card")
            with gr.Row(equal_height=False):
                with gr.Column(scale=5, min_width=320):
                    self._settings(cfg)
                with gr.Column(scale=7, min_width=420):
                    with gr.Row():
                        self.start = gr.Button("Start training", variant="primary", elem_id="start-btn")
                        self.stop = gr.Button("Stop", variant="stop", elem_id="stop-btn", interactive=False)
                    self.status = gr.HTML(status_html(None), elem_id="train-status", css_template=STATUS_CSS,
                                          js_on_load=None)
                    gr.Markdown(f"Runs on **{self.hardware.device_name}**; training continues when the page is "
                                "closed, and any browser that opens the app follows it.", elem_classes="ds-caption")
                    self.charts: dict[str, gr.Plot] = {}
                    empty = charts.training_figures([])
                    with gr.Row():
                        self._chart("loss", empty)
                        self._chart("margins", empty)
                    with gr.Row():
                        with gr.Column(min_width=200):
                            self._chart("accuracy", empty)
                            gr.Markdown(charts.ACCURACY_CAPTION, elem_classes="ds-caption")
                        self._chart("rewards", empty)
                    with gr.Row():
                        self._chart("logps", empty)
            # Per browser session: which run the page shows and what it last drew (so idle ticks send nothing).
            self.view = gr.State({})
            # Changes whenever a run starts or ends: the Chat and Runs tabs refresh on it.
            self.runs_changed = gr.State("")
            self.timer = gr.Timer(POLL_SECONDS)
        self._wire()

    @staticmethod
    def _preset_label(name: str) -> str:
        return f"{name}: {load_preset(name).summary}"

    def _chart(self, name: str, figures: dict) -> None:
        self.charts[name] = gr.Plot(figures[name], elem_id=CHART_IDS[name], show_label=False, min_width=200)

    def _settings(self, cfg: RunConfig) -> None:
        f, v = self.fields, lambda name: widget_value(name, getattr(cfg, name))
        models = [EMBEDDED] + sorted({load_preset(n).config.model for n in preset_names()} - {EMBEDDED})
        f["model"] = gr.Dropdown(models, value=v("model"), allow_custom_value=True, label="Base model",
                                 info="embedded = SmolLM2-135M-Instruct (no download); or a hub id or a local folder")
        f["method"] = gr.Radio([("LoRA", "lora"), ("QLoRA (4-bit base)", "qlora")], value=v("method"),
                               label="Method", elem_id="method")
        self.method_note = gr.Markdown(self._method_note(v("model"), v("method"), cfg), elem_classes="ds-caption")
        with gr.Accordion("Data", open=True):
            f["data"] = gr.Textbox(value=v("data"), label="Training data",
                                   info="a file path or a hub dataset id; checking a file in the Data tab puts it here")
            f["eval_data"] = gr.Textbox(value=v("eval_data"), label="Held-out data (optional)",
                                        info="empty: hold out the eval fraction of the training data")
            with gr.Row():
                f["eval_fraction"] = gr.Slider(0, 0.5, value=v("eval_fraction"), step=0.01, label="Eval fraction")
                f["eval_steps"] = gr.Number(v("eval_steps"), label="Eval every N steps", precision=0, minimum=0,
                                            info="0 = only at the end")
            f["prompt_template"] = gr.Radio(list(PROMPT_TEMPLATES), value=v("prompt_template"), label="Prompt template",
                                            info="chat: the model's chat template; alpaca: the Handbook's instruction template")
            with gr.Row():
                for part in ("prompt", "chosen", "rejected", "system"):
                    f[f"{part}_col"] = gr.Textbox(value=v(f"{part}_col"), label=f"{part} column", placeholder="auto",
                                                  min_width=90)
        with gr.Accordion("LoRA and DPO", open=True):
            with gr.Row():
                f["lora_r"] = gr.Number(v("lora_r"), label="LoRA rank r", precision=0, minimum=1, maximum=1024)
                f["lora_alpha"] = gr.Number(v("lora_alpha"), label="LoRA alpha", precision=0, minimum=1, maximum=4096,
                                            info="alpha / r scales the update")
                f["lora_dropout"] = gr.Slider(0, 0.5, value=v("lora_dropout"), step=0.01, label="LoRA dropout")
            f["lora_target_modules"] = gr.Dropdown(ALL_PROJECTIONS, value=v("lora_target_modules"), multiselect=True,
                                                   allow_custom_value=True, label="Target modules")
            with gr.Row():
                f["beta"] = gr.Number(v("beta"), label="beta", minimum=0.001, maximum=10, step=0.01,
                                      info="higher keeps the policy closer to the reference")
                f["loss_type"] = gr.Dropdown(list(LOSS_TYPES), value=v("loss_type"), label="Loss type")
                f["max_length"] = gr.Number(v("max_length"), label="Max length (tokens)", precision=0, minimum=16,
                                            maximum=32768, info="prompt + answer")
        with gr.Accordion("Optimisation", open=True):
            with gr.Row():
                f["learning_rate"] = gr.Number(v("learning_rate"), label="Learning rate", minimum=1e-8, maximum=1e-2,
                                               step=1e-7)
                f["lr_scheduler_type"] = gr.Dropdown(list(SCHEDULERS), value=v("lr_scheduler_type"), label="Scheduler")
                f["warmup_steps"] = gr.Number(v("warmup_steps"), label="Warmup steps", precision=0, minimum=0)
            with gr.Row():
                f["num_train_epochs"] = gr.Number(v("num_train_epochs"), label="Epochs", minimum=0.01, maximum=100,
                                                  step=0.1)
                f["max_steps"] = gr.Number(v("max_steps"), label="Max steps", precision=0, minimum=-1,
                                           info="-1 = use epochs")
                f["seed"] = gr.Number(v("seed"), label="Seed", precision=0, minimum=0)
            with gr.Row():
                f["per_device_train_batch_size"] = gr.Number(v("per_device_train_batch_size"), label="Batch size (pairs)",
                                                             precision=0, minimum=1, maximum=1024)
                f["gradient_accumulation_steps"] = gr.Number(v("gradient_accumulation_steps"),
                                                             label="Gradient accumulation", precision=0, minimum=1)
        with gr.Accordion("Advanced", open=False):
            with gr.Row():
                f["weight_decay"] = gr.Number(v("weight_decay"), label="Weight decay", minimum=0, step=0.001)
                f["optim"] = gr.Dropdown(list(OPTIMIZERS), value=v("optim"), allow_custom_value=True, label="Optimizer",
                                         info="auto: 8-bit Adam with CUDA + bitsandbytes, else adamw_torch")
            with gr.Row():
                f["logging_steps"] = gr.Number(v("logging_steps"), label="Log every N steps", precision=0, minimum=1)
                f["save_steps"] = gr.Number(v("save_steps"), label="Save adapter every N steps", precision=0, minimum=0)
            with gr.Row():
                f["bf16"] = gr.Dropdown([AUTO, "true", "false"], value=v("bf16"), label="bf16")
                f["gradient_checkpointing"] = gr.Dropdown([AUTO, "true", "false"], value=v("gradient_checkpointing"),
                                                          label="Gradient checkpointing")
        for name, widget in f.items():  # stable hooks for browser tests: max_steps -> #max-steps
            widget.elem_id = widget.elem_id or name.replace("_", "-")
        missing = set(field_names()) - set(f)
        if missing:  # a developer error, caught when the app is built
            raise RuntimeError(f"RunConfig fields without a widget: {', '.join(sorted(missing))}")

    # --- wiring ---
    def _wire(self) -> None:
        f = self.fields
        self.preset.input(self.load_preset, inputs=self.preset,
                          outputs=[*f.values(), self.card, self.method_note], api_name="load_preset")
        self.start.click(self.start_training, inputs_kwargs={"preset": self.preset, **f}, outputs=self.poll_outputs,
                         api_name="start", concurrency_limit=None)
        self.stop.click(self.stop_training, outputs=self.status, api_name="stop", concurrency_limit=None)
        self.timer.tick(self.poll, inputs=self.view, outputs=self.poll_outputs, api_name="poll",
                        show_progress="hidden", concurrency_limit=None, trigger_mode="always_last")
        note_inputs = ["model", "method", "lora_r", "lora_target_modules", "per_device_train_batch_size",
                       "max_length", "gradient_checkpointing"]
        gr.on([f[n].change for n in note_inputs], self.method_note_for, inputs_kwargs={n: f[n] for n in note_inputs},
              outputs=self.method_note, show_progress="hidden", trigger_mode="always_last", api_visibility="private")
        f["method"].input(self.warn_qlora, inputs=f["method"], api_visibility="private")

    @property
    def poll_outputs(self) -> list:
        return [self.status, *self.charts.values(), self.view, self.runs_changed, self.start, self.stop]

    def on_load_outputs(self) -> list:
        return [*self.poll_outputs, *self.fields.values(), self.preset, self.card, self.method_note]

    # --- handlers ---
    def load_preset(self, name: str) -> dict:
        """Every field from the preset, its card, and the memory note."""
        try:
            preset = load_preset(name)
        except ConfigError as e:
            gr.Warning(str(e))
            return {self.card: gr.skip()}
        values = {self.fields[k]: widget_value(k, v) for k, v in preset.config.to_dict().items()}
        return {**values, self.card: card_markdown(preset),
                self.method_note: self._method_note(preset.config.model, preset.config.method, preset.config)}

    def method_note_for(self, model, method, lora_r, lora_target_modules, per_device_train_batch_size, max_length,
                        gradient_checkpointing) -> str:
        try:
            cfg = RunConfig(lora_r=int(lora_r or 16), lora_target_modules=list(lora_target_modules or ALL_PROJECTIONS),
                            per_device_train_batch_size=int(per_device_train_batch_size or 2),
                            max_length=max(16, int(max_length or 512)),
                            gradient_checkpointing=None if gradient_checkpointing in (None, AUTO)
                            else gradient_checkpointing == "true")
        except (ConfigError, TypeError, ValueError):
            cfg = RunConfig()
        return self._method_note(model or EMBEDDED, method or "lora", cfg)

    def _method_note(self, model: str, method: str, cfg: RunConfig) -> str:
        return memory.describe(model, method, self.qlora_problem, lora_r=cfg.lora_r, targets=cfg.lora_target_modules,
                               batch=cfg.per_device_train_batch_size, max_length=cfg.max_length,
                               cuda=self.hardware.cuda, checkpointing=cfg.gradient_checkpointing)

    def warn_qlora(self, method: str) -> None:
        if method == "qlora" and self.qlora_problem:
            gr.Warning(self.qlora_problem, title="QLoRA unavailable")

    def start_training(self, **values) -> dict:
        preset = values.pop("preset", None)
        try:
            cfg = config_from_widgets(values)
            _check_data(cfg)
            job = TrainingJob(cfg, preset=preset or None).start()
        except Exception as e:  # noqa: BLE001 - user errors become a message; anything else is a bug and re-raised
            message = user_message(e)
            if message is None:
                raise
            gr.Warning(message, title="Cannot start")
            return {self.status: error_html(message)}
        progress = job.progress()
        return {self.status: status_html(progress), self.view: {"run": job.run.id, "rows": 0, "state": progress["state"]},
                **{self.charts[k]: fig for k, fig in charts.training_figures([]).items()},
                self.runs_changed: f"{job.run.id}:started", self.start: gr.Button(interactive=False),
                self.stop: gr.Button(interactive=True)}

    def stop_training(self) -> dict:
        job = TrainingJob.active()
        if job is None:
            gr.Info("No training is running.")
            return {self.status: gr.skip()}
        job.stop()
        return {self.status: status_html(job.progress(), note="Stopping after the current step; the adapter is saved.")}

    def poll(self, view: dict | None) -> dict:
        """One timer tick: follow the active job (or the run the page shows); send only what changed."""
        view = dict(view or {})
        job = TrainingJob.active()
        run_id = view.get("run")
        if job is not None and job.run.id != run_id:
            run_id = job.run.id  # a run started elsewhere (another browser, the API): follow it
        elif run_id is None or not (runs_root() / run_id / "status.json").is_file():
            run_id = _newest_run_id()
        out: dict = {}
        if run_id is None:
            html = status_html(None)
            if view.get("html") != html:
                out[self.status] = html
                out.update({self.charts[k]: fig for k, fig in charts.training_figures([]).items()})
            out[self.view] = {"html": html}
            return out

        live_job = job if job is not None and job.run.id == run_id else None
        if live_job is not None:
            seen = len(live_job.metrics)  # in memory: no file read while training
        else:
            path = runs_root() / run_id / "metrics.jsonl"
            seen = path.stat().st_size if path.is_file() else 0  # a run of another process grows this file
        if run_id != view.get("run") or seen != view.get("rows"):
            rows = live_job.metrics.since(0) if live_job is not None else Run(runs_root() / run_id).metrics()
            out.update({self.charts[k]: fig for k, fig in charts.training_figures(rows).items()})

        progress = progress_of(run_id, job)
        state, live = progress["state"], progress["state"] in LIVE_STATES
        html = status_html(progress)
        if html != view.get("html"):
            out[self.status] = html
        if live != view.get("live"):
            out[self.start] = gr.Button(interactive=not live)
            out[self.stop] = gr.Button(interactive=live)
        if view.get("run") and (run_id != view.get("run") or (state != view.get("state") and not live)):
            out[self.runs_changed] = f"{run_id}:{state}"
        out[self.view] = {"run": run_id, "rows": seen, "state": state, "live": live, "html": html}
        return out

    def on_load(self) -> dict:
        """A fresh page: show the active job (its settings too) or the newest run, with its whole history."""
        out = self.poll({})
        job = TrainingJob.active()
        if job is not None:
            cfg = job.requested
            out.update({self.fields[k]: widget_value(k, v) for k, v in cfg.to_dict().items()})
            if job.preset in preset_names():
                out[self.preset] = job.preset
                out[self.card] = card_markdown(load_preset(job.preset))
            out[self.method_note] = self._method_note(cfg.model, cfg.method, cfg)
        else:  # the page shows the default preset; its memory note may have waited for the model's shape
            cfg = self.default_config
            out[self.method_note] = self._method_note(cfg.model, cfg.method, cfg)
        return out
