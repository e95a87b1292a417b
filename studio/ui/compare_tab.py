"""Compare tab: a sweep over one or two settings, then runs side by side — curves, held-out accuracy, probe grid.

A sweep takes every other setting from the Train tab's form, trains one ordinary run per
combination (studio.sweep.Sweep), evaluates each and builds the probe grid; the tab then shows all
of it. Before it starts, the tab says how many steps it will train and how long that takes here
(studio.estimate); Start sweep waits while another job holds the slot. Any finished runs can be
compared the same way by picking them, with the settings they differ in. Numbers come from the run
folders (eval.json, probes.json) and grids from grid.json files, so a reload shows the same page.
"""

from __future__ import annotations

import time

import gradio as gr
import pandas as pd

from studio import jobs
from studio.access import require_user
from studio.files import check_data_source, web_config
from studio.config import detect_hardware, field_names, label_of, preset_names, sweepable
from studio.errors import ConfigError, EvalError, StudioError
from studio.estimate import sweep_estimate
from studio.evaluate import (
    MEASURE_LABELS, PROBE_MAX_NEW_TOKENS, default_probes, evaluate_run, latest_grid, probe_grid, probe_settings,
    publish_grid, result_row,
)
from studio.runs import LIVE_STATES, get_run, list_runs
from studio.sweep import LIVE_STATES as SWEEP_LIVE, Sweep, list_sweeps, sweep_grid, value_text

from .common import Services, escape, number, overlay, user_errors
from .form import config_from_widgets
from .status import STATUS_CSS, error_html
from .winrate_box import WinRateBox

POLL_SECONDS = 1.0  # while a sweep runs
IDLE_SECONDS = 5.0  # otherwise: only notice a sweep started elsewhere
NONE = "(none)"
TABLE_COLUMNS = {  # result_row() key -> header (swept settings come first, under their own names)
    "run": "run", "state": "state", "step": "steps", "seconds": "seconds", "loss": "loss", "margins": "train margin",
    "pairs": "pairs", "baseline_accuracy": "baseline acc", "tuned_accuracy": "tuned acc",
    "reward_accuracy": "reward acc", "mean_margin": "eval margin", "kl_drift": "drift",
    "baseline_repetition": "baseline repeat 4g", "repetition": "tuned repeat 4g", "baseline_distinct_2": "baseline distinct-2",
    "distinct_2": "tuned distinct-2", "baseline_mean_words": "baseline words", "mean_words": "tuned words",
    "length_ratio": "length ratio", "chosen_mean_words": "chosen words", "chosen_length_ratio": "length vs chosen",
    "baseline_ended_on_own": "baseline ended", "ended_on_own": "tuned ended",
    "damage": "warning", "error": "error",
}
MAX_GRID_RUNS = 6  # a wider grid does not read on a screen
SWEEP_COLUMNS = ["run", "state", "steps", "loss", "train margin", "tuned acc"]  # the empty table's headers


def header(key: str) -> str:
    """A table header: the result's own name, or the label the Train tab gives a setting."""
    return TABLE_COLUMNS.get(key) or (label_of(key) if key in field_names() else key)


def prompt_lines(text: str | None) -> list[str]:
    """The probe prompts of the text box: one a line, blank lines skipped."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def comparable_runs() -> list[str]:
    """Runs with a saved adapter that are not training now (their adapter is final)."""
    return [r.id for r in list_runs() if r.has_adapter and r.state not in LIVE_STATES]


def results_frame(run_ids: list[str]) -> pd.DataFrame:
    """The accuracy table: one row per run, swept values first, evaluation columns when evaluated."""
    rows = []
    for run_id in run_ids:
        try:
            rows.append(result_row(get_run(run_id)))
        except FileNotFoundError:
            continue
    keys = list(dict.fromkeys(k for r in rows for k in r))
    swept = [k for k in keys if k not in TABLE_COLUMNS]
    columns = ["run", *swept, *(k for k in TABLE_COLUMNS if k != "run" and any(k in r for r in rows))]
    data = [[number(r.get(k)) for k in columns] for r in rows]
    return pd.DataFrame(data, columns=[header(k) for k in columns])


def settings_diff(run_ids: list[str]) -> pd.DataFrame:
    """The settings in which the picked runs differ, one row each under its label; empty with fewer than two runs."""
    configs = {}
    for run_id in run_ids or []:
        try:
            raw = get_run(run_id).read_config_raw()
        except FileNotFoundError:
            continue
        raw.pop("_run", None)
        configs[run_id] = raw
    columns = ["setting", *configs]
    if len(configs) < 2:
        return pd.DataFrame([], columns=columns)
    keys = list(dict.fromkeys(k for raw in configs.values() for k in raw))
    rows = [[header(k), *(_setting_text(raw.get(k)) for raw in configs.values())] for k in keys
            if len({repr(raw.get(k)) for raw in configs.values()}) > 1]
    return pd.DataFrame(rows, columns=columns)


def _setting_text(value) -> str:
    return "" if value is None else value_text(value) if isinstance(value, (list, tuple, float)) else str(value)


def grid_frame(grid: dict | None) -> pd.DataFrame:
    """Probe grid as a table: one row per prompt, one column per model, the measures as the last rows."""
    if not grid:
        return pd.DataFrame({"prompt": []})
    names = [c["name"] for c in grid["columns"]]
    rows = [[p, *(c["answers"][i] for c in grid["columns"])] for i, p in enumerate(grid["prompts"])]
    rows += [[f"[{label}]", *(value_text(c["measures"].get(key)) if c["measures"].get(key) is not None else ""
                              for c in grid["columns"])] for key, label in MEASURE_LABELS.items()]
    return pd.DataFrame(rows, columns=["prompt", *names])


def grid_widths(grid: dict | None) -> list[str]:
    """The prompt column narrow, the answer columns sharing the rest, so every model is on screen."""
    models = len(grid["columns"]) if grid else 1
    return ["16%", *[f"{84 / models:.1f}%"] * models]


def grid_view(grid: dict | None) -> gr.Dataframe:
    return gr.Dataframe(grid_frame(grid), column_widths=grid_widths(grid))


def sweep_html(record: dict | None) -> str:
    if not record:
        return '<div class="ds-status"><span class="ds-muted">No sweep yet.</span></div>'
    entries = record.get("entries") or []
    finished = sum(e.get("state") in ("done", "stopped", "failed", "skipped") for e in entries)
    state = record.get("state", "?")
    grid = " × ".join(f"{header(k)} [{', '.join(map(value_text, v))}]" for k, v in (record.get("grid") or {}).items())
    parts = [f'<span class="ds-state {escape(state)}">{escape(state)}</span>',
             f"<span>sweep <code>{escape(record.get('id', ''))}</code></span>",
             f"<span>{escape(grid)}</span>", f"<span>runs finished <b>{finished}</b>/{len(entries)}</span>"]
    error = f'<div class="ds-error">{escape(record["error"])}</div>' if record.get("error") else ""
    return f'<div class="ds-status"><div class="ds-line">{"".join(parts)}</div>{error}</div>'


def sweep_frame(record: dict | None) -> pd.DataFrame:
    entries = (record or {}).get("entries") or []
    if not entries:  # named columns: an empty table would otherwise head itself 1 2 3
        return pd.DataFrame([], columns=SWEEP_COLUMNS)
    keys = list(dict.fromkeys(k for e in entries for k in e))
    return pd.DataFrame([[number(e.get(k)) for k in keys] for e in entries], columns=[header(k) for k in keys])


def estimate_markdown(base, grid: dict[str, list], hardware) -> str:
    """What a sweep of `grid` will cost before it starts: runs x steps, and the time when a step was measured here."""
    try:
        est = sweep_estimate(base, grid, hardware)
    except StudioError as e:
        return f"Estimate: not available yet ({e})"
    steps = est["steps"]
    per_run = f"{steps[0]} steps" if len(set(steps)) == 1 else f"{min(steps)}-{max(steps)} steps"
    line = f"**Before you start:** {est['runs']} runs × {per_run} = {est['total_steps']} training steps"
    if est["seconds"] is None:
        return (f"{line}. Time unknown: no earlier run of {escape(base.model)} ({base.method}) on this machine to "
                "measure a step from yet; train one run in the Train tab for an estimate.")
    startup = f" and ~{est['startup']:.0f} s to start each run" if est["startup"] else ""
    differs = (f" That run differs in {', '.join(est['differs'])}, so the real time will differ."
               if est["differs"] else "")
    return (f"{line} × {est['seconds_per_step']:.2f} s a step (measured on run `{est['measured_on']}` here){startup}"
            f": **about {about(est['seconds'])}**, plus evaluating each run afterwards.{differs}")


def about(seconds: float) -> str:
    """A duration as a person would round it: 40 s, 12 min, 1 h 05 min."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 90 else f"{minutes // 60} h {minutes % 60:02d} min"


def grid_of(key1: str | None, values1, key2: str | None, values2) -> dict[str, list]:
    """The sweep's grid from the two Vary rows; ConfigError naming the setting by its label when one is incomplete."""
    if not key1 or key1 == NONE:
        raise ConfigError("Pick a setting to vary.")
    grid = {key1: list(values1 or [])}
    if key2 and key2 != NONE:
        if key2 == key1:
            raise ConfigError(f"{label_of(key1)} is chosen twice; pick two different settings or leave the "
                              f"second at {NONE}.")
        grid[key2] = list(values2 or [])
    for key, values in grid.items():
        if not values:
            raise ConfigError(f"Pick at least one value of {label_of(key)} to sweep.")
    return grid


def slot_note(holder: dict | None) -> str:
    """Why Start sweep is disabled: what holds the one job slot (empty when it is free)."""
    if holder is None:
        return ""
    return (f"⏳ Start sweep waits: {escape(holder.get('title') or 'another job')} is using the job slot "
            "(one job at a time on this machine). It is enabled again when that ends.")


def _newest_sweep() -> dict | None:
    active = Sweep.active()
    if active is not None:
        return active.to_dict()
    sweeps = list_sweeps()
    return sweeps[0] if sweeps else None


class CompareTab:
    def __init__(self, services: Services):
        self.services = services
        with gr.Tab("Compare", id="compare") as self.tab:
            gr.Markdown("Train a few runs that differ in one or two settings, then read them side by side: "
                        "their curves, how often each prefers the chosen answer on held-out pairs, and their "
                        "answers to the same probe prompts next to the SFT baseline.", elem_classes="ds-caption")
            with gr.Accordion("Sweep", open=True):
                gr.Markdown("Every setting not varied here comes from the **Train** tab's form. The runs train one "
                            "after another, then each is evaluated and the probe grid is built.",
                            elem_classes="ds-caption")
                with gr.Row():
                    keys = [(label_of(k), k) for k in sweepable()]
                    self.key1 = gr.Dropdown(keys, value="learning_rate", label="Vary", scale=1, elem_id="sweep-key1")
                    self.values1 = gr.Dropdown([value_text(v) for v in sweepable()["learning_rate"]], value=["5e-05", "0.0002"],
                                               multiselect=True, allow_custom_value=True, label="values", scale=3,
                                               elem_id="sweep-values1")
                with gr.Row():
                    self.key2 = gr.Dropdown([NONE, *keys], value=NONE, label="and", scale=1, elem_id="sweep-key2")
                    self.values2 = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True, label="values",
                                               scale=3, elem_id="sweep-values2")
                self.estimate_md = gr.Markdown("", elem_classes="ds-caption", elem_id="sweep-estimate")
                holder = jobs.holder()
                with gr.Row():
                    self.start_sweep = gr.Button("Start sweep", variant="primary", elem_id="sweep-start",
                                                 interactive=holder is None)
                    self.stop_sweep = gr.Button("Stop sweep", variant="stop", elem_id="sweep-stop")
                self.sweep_note = gr.Markdown(slot_note(holder), elem_classes="ds-caption", elem_id="sweep-busy")
                record = _newest_sweep()
                self.sweep_status = gr.HTML(sweep_html(record), elem_id="sweep-status", css_template=STATUS_CSS)
                self.sweep_table = gr.Dataframe(sweep_frame(record), interactive=False, label="Sweep runs",
                                                elem_id="sweep-table", max_height=300)
            gr.Markdown("#### Runs side by side")
            choices = comparable_runs()
            picked = self.default_pick(record, choices)
            with gr.Row(equal_height=True):
                self.runs = gr.Dropdown(choices, value=picked, multiselect=True, label="Runs", scale=4,
                                        max_choices=MAX_GRID_RUNS, elem_id="compare-runs")
                self.refresh_btn = gr.Button("↻ Refresh", scale=0, min_width=100)
            self.table = gr.Dataframe(results_frame(picked), interactive=False, label="Held-out preference accuracy",
                                      elem_id="compare-table")
            self.diff = gr.Dataframe(settings_diff(picked), interactive=False, elem_id="compare-diff",
                                     label="Settings that differ between these runs (pick two or more)")
            gr.Markdown("**baseline / tuned acc**: share of held-out pairs where the SFT model / the tuned model gives "
                        "the chosen answer the higher per-token log-probability. **reward acc**: share where DPO's "
                        "implicit reward prefers the chosen answer. **drift**: per-token log-ratio of tuned to SFT on "
                        "its own probe answers (0 = unchanged).", elem_classes="ds-caption")
            self.evaluate_btn = gr.Button("Evaluate selected runs", elem_id="compare-evaluate")
            with gr.Row():
                margins, loss = overlay(picked)
                self.margins_plot = gr.Plot(margins, show_label=False, elem_id="compare-tab-margins")
                self.loss_plot = gr.Plot(loss, show_label=False, elem_id="compare-tab-loss")
            with gr.Row():
                self.prompts = gr.Textbox("\n".join(self.default_prompts(picked)), lines=4, max_lines=12, scale=4,
                                          label="Probe prompts (one a line)", elem_id="compare-prompts")
                with gr.Column(scale=1, min_width=200):
                    self.max_new_tokens = gr.Slider(8, 512, value=PROBE_MAX_NEW_TOKENS, step=8, label="Max new tokens",
                                                    info="greedy decoding: the same inputs give the same grid",
                                                    elem_id="compare-max-new-tokens")
                    self.grid_btn = gr.Button("Build probe grid", variant="primary", elem_id="compare-grid-btn")
            grid, files = latest_grid()
            self.grid = gr.Dataframe(grid_frame(grid), column_widths=grid_widths(grid), interactive=False, wrap=True,
                                     label="Probe grid",
                                     elem_id="compare-grid", max_height=700)
            self.files = gr.File(files or None, file_count="multiple", label="Probe grid as CSV and Markdown",
                                 interactive=False, elem_id="compare-files")
            self.view = gr.State({"sweep_state": (record or {}).get("state"), "sweep": (record or {}).get("id")})
            self.timer = gr.Timer(IDLE_SECONDS)
            self.winrate = WinRateBox(services, self.tab)  # its own section: the preference loop's win rate
        self.hardware = detect_hardware()
        self._wire()

    @staticmethod
    def default_pick(record: dict | None, choices: list[str]) -> list[str]:
        """The newest sweep's runs if it finished, else the newest finished run."""
        if record and record.get("state") not in SWEEP_LIVE:
            picked = [r for r in record.get("runs", []) if r in choices][:MAX_GRID_RUNS]
            if picked:
                return picked
        return choices[:1]

    @staticmethod
    def default_prompts(run_ids: list[str]) -> list[str]:
        try:
            return default_probes(get_run(run_ids[0]) if run_ids else None)
        except FileNotFoundError:
            return default_probes(None)

    def _wire(self) -> None:
        self.key1.change(self.suggest, inputs=self.key1, outputs=self.values1, api_visibility="private",
                         show_progress="hidden")
        self.key2.change(self.suggest, inputs=self.key2, outputs=self.values2, api_visibility="private",
                         show_progress="hidden")
        self.stop_sweep.click(self.stop, outputs=self.sweep_status, api_name="stop_sweep", concurrency_limit=None)
        self.timer.tick(self.poll, inputs=self.view, outputs=self.poll_outputs, api_name="poll_sweep",
                        show_progress="hidden", concurrency_limit=None, trigger_mode="always_last")
        gr.on([self.refresh_btn.click, self.tab.select], self.refresh, inputs=self.runs,
              outputs=[self.runs, self.table, self.margins_plot, self.loss_plot, self.diff], api_name="refresh_compare",
              concurrency_limit=None, show_progress="hidden")
        self.runs.change(self.show_runs, inputs=self.runs,
                         outputs=[self.table, self.margins_plot, self.loss_plot, self.diff],
                         api_name="compare_selected", concurrency_limit=None, show_progress="hidden")
        # Evaluation and grids hold the CPU for minutes: one at a time, in their own queue.
        self.evaluate_btn.click(self.evaluate, inputs=[self.runs, self.prompts, self.max_new_tokens],
                                outputs=self.table, api_name="evaluate_runs", concurrency_id="compare",
                                concurrency_limit=1)
        self.grid_btn.click(self.build_grid, inputs=[self.runs, self.prompts, self.max_new_tokens],
                            outputs=[self.grid, self.files], api_name="probe_grid", concurrency_id="compare",
                            concurrency_limit=1)

    def connect(self, train) -> None:
        """A sweep starts from the Train tab's form: the same widgets, the same validation as Start."""
        self.start_sweep.click(
            self.start, inputs_kwargs={"preset": train.preset, "key1": self.key1, "values1": self.values1,
                                       "key2": self.key2, "values2": self.values2, "prompts": self.prompts,
                                       "max_new_tokens": self.max_new_tokens, **train.fields},
            outputs=[self.sweep_status, self.sweep_table, self.view, self.timer, self.start_sweep, self.sweep_note],
            api_name="start_sweep", concurrency_limit=None)
        # The estimate follows the Vary rows and, on opening the tab, the Train tab's settings.
        gr.on([self.tab.select, self.key1.change, self.values1.change, self.key2.change, self.values2.change],
              self.estimate, inputs_kwargs={"key1": self.key1, "values1": self.values1, "key2": self.key2,
                                            "values2": self.values2, **train.fields},
              outputs=self.estimate_md, api_name="estimate_sweep", concurrency_limit=None, show_progress="hidden",
              trigger_mode="always_last")

    @property
    def load_outputs(self) -> list:
        return [self.sweep_status, self.sweep_table, self.view, self.runs, self.table, self.margins_plot,
                self.loss_plot, self.prompts, self.max_new_tokens, self.grid, self.files, self.diff, self.start_sweep,
                self.sweep_note]

    def on_load(self) -> tuple:
        """A fresh page: the newest sweep, its runs (or the newest run) side by side, the newest grid."""
        record = _newest_sweep()
        choices = comparable_runs()
        picked = self.default_pick(record, choices)
        grid, files = latest_grid()
        view = {"sweep": (record or {}).get("id"), "sweep_state": (record or {}).get("state")}
        # The probe settings of the grid on show, so "Build probe grid" rebuilds that very grid.
        prompts = grid["prompts"] if grid else self.default_prompts(picked)
        max_new_tokens = (grid or {}).get("settings", {}).get("max_new_tokens", PROBE_MAX_NEW_TOKENS)
        table, margins, loss, diff = self.show_runs(picked)
        holder = jobs.holder()
        view["busy"] = slot_note(holder)
        return (sweep_html(record), sweep_frame(record), view, gr.Dropdown(choices=choices, value=picked),
                table, margins, loss, "\n".join(prompts), max_new_tokens, grid_view(grid), files or None, diff,
                gr.Button(interactive=holder is None), view["busy"])

    @property
    def poll_outputs(self) -> list:
        return [self.sweep_status, self.sweep_table, self.view, self.runs, self.table, self.margins_plot,
                self.loss_plot, self.grid, self.files, self.timer, self.diff, self.start_sweep, self.sweep_note]

    # --- handlers ---
    def suggest(self, key: str):
        if not key or key == NONE:
            return gr.Dropdown(choices=[], value=[])
        return gr.Dropdown(choices=[value_text(v) for v in sweepable().get(key, [])], value=[])

    @user_errors("Cannot start the sweep", lambda self, message: {self.sweep_status: error_html(message)})
    def start(self, preset=None, key1=None, values1=None, key2=None, values2=None, prompts="", max_new_tokens=None,
              request: gr.Request = None, **fields) -> dict:
        require_user(request, "start a sweep")
        grid = grid_of(key1, values1, key2, values2)
        cfg = config_from_widgets(fields)
        cfg = web_config(cfg)
        probes = prompt_lines(prompts) or None
        sweep = Sweep(cfg, grid, preset=preset if preset in preset_names() else None, probes=probes,
                      settings=probe_settings(int(max_new_tokens or PROBE_MAX_NEW_TOKENS))).start()
        record = sweep.to_dict()
        gr.Info(f"Sweep {sweep.id}: {len(sweep.configs())} runs queued. The Train tab follows the run in progress.")
        return {self.sweep_status: sweep_html(record), self.sweep_table: sweep_frame(record),
                self.view: {"sweep": sweep.id, "sweep_state": record["state"]}, self.timer: gr.Timer(POLL_SECONDS),
                self.start_sweep: gr.Button(interactive=False), self.sweep_note: slot_note(sweep.describe())}

    def estimate(self, key1=None, values1=None, key2=None, values2=None, **fields) -> str:
        """Runs x steps of the sweep the form describes, and its time from a step measured on this machine."""
        try:
            grid = grid_of(key1, values1, key2, values2)
            cfg = config_from_widgets(fields)
            cfg = cfg.replace(data=check_data_source(cfg.data))
        except StudioError as e:
            return f"Estimate: not available yet ({e})"
        return estimate_markdown(cfg, grid, self.hardware)

    @user_errors("Cannot stop the sweep")
    def stop(self, request: gr.Request = None):
        require_user(request, "stop a sweep")
        sweep = Sweep.active()
        if sweep is None:
            gr.Info("No sweep is running.")
            return gr.skip()
        sweep.stop()
        return sweep_html({**sweep.to_dict(), "error": "Stopping: the current run saves its adapter; the rest are skipped."})

    def poll(self, view: dict | None) -> dict:
        """Follow the newest sweep; when it ends, open its comparison (runs, table, curves, grid). Start sweep is
        enabled only while the job slot is free."""
        view = dict(view or {})
        out: dict = {}
        holder = jobs.holder()
        busy = slot_note(holder)
        if busy != view.get("busy"):
            out.update({self.start_sweep: gr.Button(interactive=holder is None), self.sweep_note: busy})
            view["busy"] = busy
        record = _newest_sweep()
        if record is None:
            return {**out, self.view: view}
        key = (record["id"], record["state"], [e.get("state") for e in record.get("entries", [])],
               [e.get("tuned_accuracy") for e in record.get("entries", [])])
        if repr(key) != view.get("key"):
            out[self.sweep_status] = sweep_html(record)
            out[self.sweep_table] = sweep_frame(record)
        was_live = view.get("sweep") == record["id"] and view.get("sweep_state") in SWEEP_LIVE
        if was_live and record["state"] not in SWEEP_LIVE:
            out.update(self.open_sweep(record))
        live = record["state"] in SWEEP_LIVE
        if live != (view.get("sweep_state") in SWEEP_LIVE) or "key" not in view:
            out[self.timer] = gr.Timer(POLL_SECONDS if live else IDLE_SECONDS)
        out[self.view] = {"sweep": record["id"], "sweep_state": record["state"], "key": repr(key), "busy": busy}
        return out

    def open_sweep(self, record: dict) -> dict:
        choices = comparable_runs()
        picked = [r for r in record.get("runs", []) if r in choices][:MAX_GRID_RUNS]
        margins, loss = overlay(picked)
        out = {self.runs: gr.Dropdown(choices=choices, value=picked), self.table: results_frame(picked),
               self.margins_plot: margins, self.loss_plot: loss, self.diff: settings_diff(picked)}
        grid = sweep_grid(record["id"])
        if grid is not None:
            out[self.grid] = grid_view(grid)
            out[self.files] = publish_grid(grid, record["id"])
        return out

    def refresh(self, picked: list[str] | None):
        choices = comparable_runs()
        kept = [r for r in (picked or []) if r in choices] or choices[:1]
        return (gr.Dropdown(choices=choices, value=kept), *self.show_runs(kept))

    def show_runs(self, picked: list[str] | None):
        return (results_frame(picked or []), *overlay(picked), settings_diff(picked or []))

    def _engine(self, runs):
        import torch

        models = {r.config().model for r in runs}
        if len(models) > 1:
            raise EvalError(f"These runs use different base models ({', '.join(sorted(models))}); "
                            "compare runs of one model.")
        # fp32 as the CLI and sweeps: scores and probe answers match theirs, and cached answers are reused.
        return self.services.chat.get(models.pop(), dtype=torch.float32)

    def evaluate(self, picked: list[str] | None, prompts: str, max_new_tokens, progress=gr.Progress(),
                 request: gr.Request = None):
        """Held-out accuracy of each run (saved as its eval.json); drift is measured on the probe prompts."""
        if not picked:
            gr.Warning("Select at least one run.")
            return gr.skip()
        self._evaluate(picked, prompt_lines(prompts), int(max_new_tokens or PROBE_MAX_NEW_TOKENS), progress, request)
        return results_frame(picked)

    @user_errors("Cannot evaluate")
    def _evaluate(self, picked: list[str], probes: list[str], max_new_tokens: int, progress, request=None) -> None:
        require_user(request, "evaluate runs")
        runs = [get_run(r) for r in picked]
        settings = probe_settings(max_new_tokens)

        def work(job):
            engine = self._engine(runs)
            for i, run in enumerate(runs):
                if job.stopping():
                    return
                job.report(f"evaluating {run.id}", i, len(runs))
                progress((i, len(runs)), desc=f"evaluating {run.id}")
                evaluate_run(run, engine=engine, probes=probes, settings=settings)

        jobs.run("evaluate", f"evaluating {len(runs)} run(s)", work)

    def build_grid(self, picked: list[str] | None, prompts: str, max_new_tokens, progress=gr.Progress(),
                   request: gr.Request = None):
        lines = prompt_lines(prompts)
        if not picked or not lines:
            gr.Warning("Select at least one run and write at least one probe prompt, one a line.")
            return gr.skip(), gr.skip()
        return self._grid(picked, lines, int(max_new_tokens), progress, request)

    @user_errors("Cannot build the grid", lambda self, message: (gr.skip(), gr.skip()))
    def _grid(self, picked: list[str], lines: list[str], max_new_tokens: int, progress, request=None):
        require_user(request, "build a probe grid")
        runs = [get_run(r) for r in picked]
        phase = f"answering {len(lines)} prompts with the SFT baseline and {len(runs)} run(s)"
        progress(0, desc=phase)

        def work(job):
            job.report(phase)
            return probe_grid(runs, lines, engine=self._engine(runs), settings=probe_settings(max_new_tokens))

        grid = jobs.run("grid", "building a probe grid", work)
        return grid_view(grid), publish_grid(grid, f"{time.strftime('%Y%m%d-%H%M%S')}-{len(runs)}-runs")
