"""Train tab: a preset fills every RunConfig field; Start and Stop drive a TrainingJob; a timer follows the run.

Widgets live in a dict keyed by RunConfig field name and handlers take and return values by that
name, so a new RunConfig field needs one widget here and nothing else. What the tab shows comes
from the engine: the active `TrainingJob` of this process, else the run folder on disk, so a
reload, a second browser or a restarted server sees the same run.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from studio import distributed, memory
from studio.config import (
    PRESETS_DIR, RunConfig, detect_hardware, load_preset, preset_names, resolve_for_hardware, studio_home,
)
from studio.access import require_user
from studio.data.findings import SMALL_EVAL
from studio.training_data import eval_source, held_out_count
from studio.files import web_config
from studio.store import find
from studio.errors import ConfigError, StudioError
from studio.models import EMBEDDED
from studio.runs import LIVE_STATES, Run, list_runs, runs_root
from studio.training import TrainingJob, check_run

from . import charts
from .common import IDLE_SECONDS, idle_pace, user_errors
from .form import AUTO, build_settings, config_from_widgets, widget_value
from .status import STATUS_CSS, error_html, status_html

POLL_SECONDS = 0.5  # a logged metric reaches the charts within this plus one round trip (< 2 s)
CHART_IDS = {"loss": "loss-chart", "margins": "margins-chart", "accuracy": "accuracy-chart",
             "rewards": "rewards-chart", "logps": "logps-chart", "objective": "objective-chart"}


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


def is_run(run_id) -> bool:
    try:
        find("runs", run_id, "status.json")
    except FileNotFoundError:
        return False
    return True


def progress_of(run_id: str, job: TrainingJob | None) -> dict:
    """The live job's progress when it is this run, else what the run folder says."""
    return job.progress() if job is not None and job.run.id == run_id else Run(runs_root() / run_id).progress()


def web_data(cfg: RunConfig) -> RunConfig:
    """The config with its data paths checked against the folders the web app may read (AccessError if not)."""
    return web_config(cfg)


def is_preset_data(path: str) -> bool:
    """True for the demo data shipped with the presets (which a preset may replace with its own)."""
    try:
        return (PRESETS_DIR / "data").resolve() in Path(path).resolve().parents
    except (OSError, ValueError):
        return False


def _objective_of(run_id: str, job: TrainingJob | None) -> str:
    """The objective a run trains (its charts are titled for it); dpo when its config cannot be read."""
    if job is not None:
        return job.config.objective
    try:
        return Run(runs_root() / run_id).config().objective
    except (ConfigError, OSError, ValueError, AttributeError):
        return "dpo"


def _newest_run_id() -> str | None:
    runs = list_runs()
    return runs[0].id if runs else None


# --- the tab --------------------------------------------------------------------------------------


class TrainTab:
    def __init__(self, default_preset: str = "cpu-quickstart"):
        preset = load_preset(default_preset)
        cfg = self.default_config = preset.config
        self.hardware = detect_hardware()
        self.qlora_problem = qlora_problem()

        with gr.Tab("Train", id="train") as self.tab:
            with gr.Row(equal_height=False, elem_id="train-top"):
                with gr.Column(scale=2, min_width=260, elem_id="train-preset"):
                    self.preset = gr.Dropdown(
                        [(self._preset_label(n), n) for n in preset_names()], value=preset.name, label="Preset",
                        info="fills every setting below", elem_id="preset")
                with gr.Column(scale=5, elem_id="train-card"):
                    self.card = gr.Markdown(card_markdown(preset), elem_classes="ds-card")
            # Start and the status come before every setting; on a phone (studio.css) even before the card, so
            # they are on the first screen.
            with gr.Row(elem_id="train-actions"):
                self.start = gr.Button("Start training", variant="primary", elem_id="start-btn", min_width=140)
                self.stop = gr.Button("Stop", variant="stop", elem_id="stop-btn", interactive=False, min_width=100)
            self.status = gr.HTML(status_html(None), elem_id="train-status", css_template=STATUS_CSS, js_on_load=None)
            gr.Markdown(f"Runs on **{self.hardware.device_name}**; training continues when the page is "
                        "closed, and any browser that opens the app follows it.", elem_classes="ds-caption")
            with gr.Row(equal_height=False):
                with gr.Column(scale=5, min_width=320):
                    self._settings(cfg)
                with gr.Column(scale=7, min_width=320, elem_classes="ds-charts"):
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
                        self._chart("objective", empty)
            self._several_gpus(preset.name, cfg)
            # Per browser session: which run the page shows and what it last drew (so idle ticks send nothing).
            self.view = gr.State({})
            # Changes whenever a run starts or ends: the Chat and Runs tabs refresh on it.
            self.runs_changed = gr.State("")
            self.timer = gr.Timer(IDLE_SECONDS)
        self._wire()

    @staticmethod
    def _preset_label(name: str) -> str:
        return f"{name}: {load_preset(name).summary}"

    def _chart(self, name: str, figures: dict) -> None:
        self.charts[name] = gr.Plot(figures[name], elem_id=CHART_IDS[name], show_label=False, min_width=200)

    def _several_gpus(self, preset: str, cfg: RunConfig) -> None:
        """A read-only command that trains the current settings on several GPUs, headless, into this STUDIO_HOME."""
        import torch

        with gr.Accordion("Train on several GPUs", open=False, elem_id="several-gpus"):
            gr.Markdown("On one GPU, press Start. On several GPUs or nodes, run this command in a terminal on "
                        "that machine: the run appears under Runs like any other. DeepSpeed needs "
                        "`pip install deepspeed`; ZeRO-3 and FSDP shard a model that does not fit one card.",
                        elem_classes="ds-caption")
            gpus = max(2, torch.cuda.device_count())
            with gr.Row():
                self.gpus = gr.Number(gpus, label="GPUs per node", precision=0, minimum=1, maximum=64)
                self.nodes = gr.Number(1, label="Nodes", precision=0, minimum=1, maximum=1024)
                self.strategy = gr.Dropdown([(text, key) for key, text in distributed.STRATEGIES.items()],
                                            value="torchrun", label="How the GPUs share the work")
            shown = {k: widget_value(k, v) for k, v in cfg.to_dict().items()}
            self.command = gr.Code(self.launch_command_for(preset, gpus, 1, "torchrun", **shown),
                                   language="shell", interactive=False, label="Command", elem_id="launch-command")

    def launch_command_for(self, preset, gpus, nodes, strategy, **values) -> str:
        """The launch command for the form's settings, or what to fix first."""

        try:
            cfg = config_from_widgets(values)
            return distributed.launch_command(cfg, int(gpus or 1), preset=preset, strategy=strategy,
                                              home=studio_home(), nodes=int(nodes or 1))
        except (ConfigError, TypeError, ValueError) as e:
            return f"# fix the settings first: {e}"

    def _settings(self, cfg: RunConfig) -> None:
        models = [EMBEDDED] + sorted({load_preset(n).config.model for n in preset_names()} - {EMBEDDED})
        self.fields = build_settings(cfg, model_choices=models)
        self.method_note = gr.Markdown(self._method_note(cfg.model, cfg.method, cfg), elem_classes="ds-caption")
        self.eval_note = gr.Markdown(self._eval_note(cfg), elem_classes="ds-caption", elem_id="eval-source")

    # --- wiring ---
    def _wire(self) -> None:
        f = self.fields
        self.preset.input(self.load_preset, inputs=[self.preset, f["data"], f["eval_data"]],
                          outputs=[*f.values(), self.eval_note, self.card, self.method_note], api_name="load_preset")
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
        # A "not started" message answers the settings it was given: changing any setting takes it away.
        gr.on([w.input for w in f.values()], self.clear_refusal, inputs=self.view, outputs=self.poll_outputs,
              show_progress="hidden", trigger_mode="always_last", api_visibility="private", concurrency_limit=None)
        launch_inputs = {"preset": self.preset, "gpus": self.gpus, "nodes": self.nodes, "strategy": self.strategy, **f}
        gr.on([w.change for w in launch_inputs.values()], self.launch_command_for, inputs_kwargs=launch_inputs,
              outputs=self.command, show_progress="hidden", trigger_mode="always_last", api_visibility="private")
        eval_inputs = ["data", "eval_data", "eval_fraction", "seed"]
        gr.on([f[n].change for n in eval_inputs], self.eval_note_for, inputs_kwargs={n: f[n] for n in eval_inputs},
              outputs=self.eval_note, show_progress="hidden", trigger_mode="always_last", api_visibility="private")

    @property
    def poll_outputs(self) -> list:
        return [self.status, *self.charts.values(), self.view, self.runs_changed, self.start, self.stop, self.timer]

    def on_load_outputs(self) -> list:
        return [*self.poll_outputs, *self.fields.values(), self.preset, self.card, self.method_note, self.eval_note]

    # --- handlers ---
    @user_errors("Cannot load the preset")
    def load_preset(self, name: str, data: str | None = None, eval_data: str | None = None) -> dict:
        """Every field from the preset, its card, and the memory note; data the user chose is kept."""
        preset = load_preset(name)
        values = {self.fields[k]: widget_value(k, v) for k, v in preset.config.to_dict().items()}
        if data and not is_preset_data(data):
            # The user's own file (checked in the Data tab or typed): a preset never swaps it out silently.
            values[self.fields["data"]] = data
            values[self.fields["eval_data"]] = eval_data or ""
            # Said in the preset's card, not in a toast: the select event can fire twice (two toasts), and on a
            # phone a toast covered the tab bar.
            note = (f"**Your data stays.** Kept your training data ({Path(data).name}); the preset's demo data is not "
                    "used. Clear the Training data field and pick the preset again to train on its demo data.\n\n")
        # The caption follows the data the run will read: the user's kept file and its split, not the preset's.
        own = data and not is_preset_data(data)
        kept = preset.config.replace(data=data, eval_data=eval_data or None) if own else preset.config
        return {**values, self.card: (note if own else "") + card_markdown(preset),
                self.method_note: self._method_note(preset.config.model, preset.config.method, preset.config),
                self.eval_note: self._eval_note(kept)}

    def method_note_for(self, model, method, lora_r, lora_target_modules, per_device_train_batch_size, max_length,
                        gradient_checkpointing) -> str:
        try:
            cfg = RunConfig(lora_r=int(lora_r or 16), lora_target_modules=list(lora_target_modules or RunConfig().lora_target_modules),
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
                               cuda=self.hardware.cuda, checkpointing=cfg.gradient_checkpointing,
                               free_gb=memory.free_gpu_gb() if self.hardware.cuda else None,
                               accumulation=cfg.gradient_accumulation_steps)

    @staticmethod
    def _eval_note(cfg: RunConfig) -> str:
        """Which pairs the run will hold out, and how many: under SMALL_EVAL the accuracy is too coarse to trust."""
        text = f"Held-out pairs for evaluation: **{eval_source(cfg)}**"
        try:
            n = held_out_count(web_data(cfg))
        except StudioError:  # a file the web app may not read, or not readable yet: the Data tab says why
            n = None
        if n is None:
            return text + "."
        text += f": {n} pair{'' if n == 1 else 's'}."
        if n < SMALL_EVAL:
            text += (f" ⚠️ Fewer than {SMALL_EVAL}: one pair moves the held-out accuracy by "
                     f"{100 / max(n, 1):.0f} points, so it is shown with its 95% interval. A held-out file or a "
                     "larger eval fraction gives a usable accuracy.")
        return text

    def eval_note_for(self, data, eval_data, eval_fraction, seed) -> str:
        try:
            cfg = RunConfig(data=data or "", eval_data=eval_data or None, eval_fraction=eval_fraction or 0,
                            seed=int(seed or 0))
        except (ConfigError, TypeError, ValueError):
            return gr.skip()
        return self._eval_note(cfg)

    def warn_qlora(self, method: str) -> None:
        if method == "qlora" and self.qlora_problem:
            gr.Warning(self.qlora_problem, title="QLoRA unavailable")

    # The refusal stays on screen (the idle poll leaves it alone) until the user changes a setting.
    @user_errors("Cannot start", lambda self, message: {self.status: error_html(message), self.view: {"error": True}})
    def start_training(self, request: gr.Request = None, **values) -> dict:
        require_user(request, "start training")
        preset = values.pop("preset", None)
        cfg = web_data(config_from_widgets(values))
        # As the CLI checks it: the backend, the model, its LoRA targets and the data, before a run folder exists.
        job = TrainingJob(cfg, preset=preset or None)
        check_run(job.config)
        job.start()
        progress = job.progress()
        return {self.status: status_html(progress), self.view: {"run": job.run.id, "rows": 0, "state": progress["state"]},
                **{self.charts[k]: fig for k, fig in charts.training_figures([], cfg.objective).items()},
                self.runs_changed: f"{job.run.id}:started", self.start: gr.Button(interactive=False),
                self.stop: gr.Button(interactive=True), self.timer: gr.Timer(POLL_SECONDS)}

    @user_errors("Cannot stop")
    def stop_training(self, request: gr.Request = None) -> dict:
        require_user(request, "stop training")
        job = TrainingJob.active()
        if job is None:
            gr.Info("No training is running.")
            return {self.status: gr.skip()}
        job.stop()
        note = ("Stopping after the current step; the adapter trained so far will be saved." if job.state == "training"
                else "Stopping before training begins: nothing was trained, so no adapter will be saved.")
        return {self.status: status_html(job.progress(), note=note)}

    def poll(self, view: dict | None) -> dict:
        """One timer tick: follow the active job (or the run the page shows); send only what changed."""
        view = dict(view or {})
        job = TrainingJob.active()
        if view.get("error") and job is None:
            return {self.view: gr.skip()}  # (an empty dict would read as one output value)
        run_id = view.get("run")
        if job is not None and job.run.id != run_id:
            run_id = job.run.id  # a run started elsewhere (another browser, the API): follow it
        elif run_id is None or not is_run(run_id):  # an id is a name among the runs, never a path
            run_id = _newest_run_id()
        out: dict = {}
        if run_id is None:
            html = status_html(None)
            if view.get("html") != html:
                out[self.status] = html
                out.update({self.charts[k]: fig for k, fig in charts.training_figures([]).items()})
            quiet, pace = idle_pace(self.timer, view.get("quiet", 0), bool(out))
            out.update(pace)
            out[self.view] = {"html": html, "quiet": quiet}
            return out

        live_job = job if job is not None and job.run.id == run_id else None
        if live_job is not None:
            seen = len(live_job.metrics)  # in memory: no file read while training
        else:
            seen = Run(runs_root() / run_id).metrics_size()  # a run of another process grows this file
        if run_id != view.get("run") or seen != view.get("rows"):
            rows = live_job.metrics.since(0) if live_job is not None else Run(runs_root() / run_id).metrics()
            objective = _objective_of(run_id, live_job)
            out.update({self.charts[k]: fig for k, fig in charts.training_figures(rows, objective).items()})

        progress = progress_of(run_id, job)
        state, live = progress["state"], progress["state"] in LIVE_STATES
        html = status_html(progress)
        if html != view.get("html"):
            out[self.status] = html
        quiet = 0
        if live != view.get("live"):
            out[self.start] = gr.Button(interactive=not live)
            out[self.stop] = gr.Button(interactive=live)
            out[self.timer] = gr.Timer(POLL_SECONDS if live else IDLE_SECONDS)
        elif not live:
            quiet, pace = idle_pace(self.timer, view.get("quiet", 0), bool(out))
            out.update(pace)
        if view.get("run") and (run_id != view.get("run") or (state != view.get("state") and not live)):
            out[self.runs_changed] = f"{run_id}:{state}"
        out[self.view] = {"run": run_id, "rows": seen, "state": state, "live": live, "html": html, "quiet": quiet}
        return out

    def clear_refusal(self, view: dict | None) -> dict:
        return self.poll({}) if (view or {}).get("error") else {self.view: gr.skip()}

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
