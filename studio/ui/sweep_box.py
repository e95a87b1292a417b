"""The Compare tab's sweep section: vary one or two settings, train one ordinary run per combination.

A sweep takes every other setting from the Train tab's form (studio.sweep.Sweep trains, evaluates each
run and builds the probe grid). Before it starts, the box says how many steps it will train and how long
that takes here (studio.estimate); Start sweep waits while another job holds the slot. The box follows
the newest sweep; when one ends, the tab opens its comparison (the `opened` callback of `wire`).
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from studio import jobs
from studio.access import require_user
from studio.config import label_of, preset_names, sweepable
from studio.errors import ConfigError, StudioError
from studio.estimate import sweep_estimate
from studio.files import check_data_source, web_config
from studio.probes import PROBE_MAX_NEW_TOKENS, probe_settings
from studio.sweep import LIVE_STATES as SWEEP_LIVE, Sweep, list_sweeps, value_text

from .common import IDLE_SECONDS, escape, header, idle_pace, number, user_errors
from .form import config_from_widgets
from .status import STATUS_CSS, error_html

POLL_SECONDS = 1.0  # while a sweep runs
NONE = "(none)"
SWEEP_COLUMNS = ["run", "state", "steps", "loss", "train margin", "tuned acc"]  # the empty table's headers


def prompt_lines(text: str | None) -> list[str]:
    """The probe prompts of a text box: one a line, blank lines skipped."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


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


def newest_sweep() -> dict | None:
    active = Sweep.active()
    if active is not None:
        return active.to_dict()
    sweeps = list_sweeps()
    return sweeps[0] if sweeps else None


class SweepBox:
    """The Vary rows, the estimate, Start / Stop sweep and the newest sweep's status and runs."""

    def __init__(self, hardware):
        self.hardware = hardware
        self.opened = lambda record: {}  # the tab's widgets for a sweep that just ended (set by `wire`)
        with gr.Accordion("Sweep", open=True):
            gr.Markdown("Every setting not varied here comes from the **Train** tab's form. The runs train one "
                        "after another, then each is evaluated and the probe grid is built.",
                        elem_classes="ds-caption")
            with gr.Row():
                keys = [(label_of(k), k) for k in sweepable()]
                self.key1 = gr.Dropdown(keys, value="learning_rate", label="Vary", scale=1, elem_id="sweep-key1")
                self.values1 = gr.Dropdown([value_text(v) for v in sweepable()["learning_rate"]],
                                           value=["5e-05", "0.0002"], multiselect=True, allow_custom_value=True,
                                           label="values", scale=3, elem_id="sweep-values1")
            with gr.Row():
                self.key2 = gr.Dropdown([NONE, *keys], value=NONE, label="and", scale=1, elem_id="sweep-key2")
                self.values2 = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True, label="values",
                                           scale=3, elem_id="sweep-values2")
            self.estimate_md = gr.Markdown("", elem_classes="ds-caption", elem_id="sweep-estimate")
            holder = jobs.holder()
            with gr.Row():
                self.start_btn = gr.Button("Start sweep", variant="primary", elem_id="sweep-start",
                                           interactive=holder is None)
                self.stop_btn = gr.Button("Stop sweep", variant="stop", elem_id="sweep-stop")
            self.note = gr.Markdown(slot_note(holder), elem_classes="ds-caption", elem_id="sweep-busy")
            self.record = record = newest_sweep()  # what the page was built with
            self.status = gr.HTML(sweep_html(record), elem_id="sweep-status", css_template=STATUS_CSS)
            self.table = gr.Dataframe(sweep_frame(record), interactive=False, label="Sweep runs",
                                      elem_id="sweep-table", max_height=300)
        self.view = gr.State({"sweep_state": (record or {}).get("state"), "sweep": (record or {}).get("id")})
        self.timer = gr.Timer(IDLE_SECONDS)

    def wire(self, opened, poll_outputs: list) -> None:
        """`opened(record)`: the tab's outputs for a sweep that just ended; `poll_outputs`: the box's widgets and
        those, in the order the poll_sweep endpoint returns them."""
        self.opened = opened
        self.key1.change(self.suggest, inputs=self.key1, outputs=self.values1, api_visibility="private",
                         show_progress="hidden")
        self.key2.change(self.suggest, inputs=self.key2, outputs=self.values2, api_visibility="private",
                         show_progress="hidden")
        self.stop_btn.click(self.stop, outputs=self.status, api_name="stop_sweep", concurrency_limit=None)
        self.timer.tick(self.poll, inputs=self.view, outputs=poll_outputs, api_name="poll_sweep",
                        show_progress="hidden", concurrency_limit=None, trigger_mode="always_last")

    def connect(self, train, tab, prompts, max_new_tokens) -> None:
        """A sweep starts from the Train tab's form: the same widgets, the same validation as Start."""
        self.start_btn.click(
            self.start, inputs_kwargs={"preset": train.preset, "key1": self.key1, "values1": self.values1,
                                       "key2": self.key2, "values2": self.values2, "prompts": prompts,
                                       "max_new_tokens": max_new_tokens, **train.fields},
            outputs=[self.status, self.table, self.view, self.timer, self.start_btn, self.note],
            api_name="start_sweep", concurrency_limit=None)
        # The estimate follows the Vary rows and, on opening the tab, the Train tab's settings.
        gr.on([tab.select, self.key1.change, self.values1.change, self.key2.change, self.values2.change],
              self.estimate, inputs_kwargs={"key1": self.key1, "values1": self.values1, "key2": self.key2,
                                            "values2": self.values2, **train.fields},
              outputs=self.estimate_md, api_name="estimate_sweep", concurrency_limit=None, show_progress="hidden",
              trigger_mode="always_last")

    # --- handlers ---
    def suggest(self, key: str):
        if not key or key == NONE:
            return gr.Dropdown(choices=[], value=[])
        return gr.Dropdown(choices=[value_text(v) for v in sweepable().get(key, [])], value=[])

    @user_errors("Cannot start the sweep", lambda self, message: {self.status: error_html(message)})
    def start(self, preset=None, key1=None, values1=None, key2=None, values2=None, prompts="", max_new_tokens=None,
              request: gr.Request = None, **fields) -> dict:
        require_user(request, "start a sweep")
        grid = grid_of(key1, values1, key2, values2)
        cfg = config_from_widgets(fields)
        cfg = web_config(cfg)  # every path a browser sent (data, model, adapter) checked
        probes = prompt_lines(prompts) or None
        sweep = Sweep(cfg, grid, preset=preset if preset in preset_names() else None, probes=probes,
                      settings=probe_settings(int(max_new_tokens or PROBE_MAX_NEW_TOKENS))).start()
        record = sweep.to_dict()
        gr.Info(f"Sweep {sweep.id}: {len(sweep.configs())} runs queued. The Train tab follows the run in progress.")
        return {self.status: sweep_html(record), self.table: sweep_frame(record),
                self.view: {"sweep": sweep.id, "sweep_state": record["state"]}, self.timer: gr.Timer(POLL_SECONDS),
                self.start_btn: gr.Button(interactive=False), self.note: slot_note(sweep.describe())}

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
            out.update({self.start_btn: gr.Button(interactive=holder is None), self.note: busy})
            view["busy"] = busy
        record = newest_sweep()
        if record is None:
            view["quiet"], pace = idle_pace(self.timer, view.get("quiet", 0), bool(out))
            return {**out, **pace, self.view: view}
        key = (record["id"], record["state"], [e.get("state") for e in record.get("entries", [])],
               [e.get("tuned_accuracy") for e in record.get("entries", [])])
        if repr(key) != view.get("key"):
            out[self.status] = sweep_html(record)
            out[self.table] = sweep_frame(record)
        was_live = view.get("sweep") == record["id"] and view.get("sweep_state") in SWEEP_LIVE
        if was_live and record["state"] not in SWEEP_LIVE:
            out.update(self.opened(record))
        live, first_look = record["state"] in SWEEP_LIVE, "key" not in view
        quiet = 0
        if live != (view.get("sweep_state") in SWEEP_LIVE) or first_look:
            out[self.timer] = gr.Timer(POLL_SECONDS if live else IDLE_SECONDS)
        elif not live:
            quiet, pace = idle_pace(self.timer, view.get("quiet", 0), bool(out))
            out.update(pace)
        view.update({"sweep": record["id"], "sweep_state": record["state"], "key": repr(key), "busy": busy,
                     "quiet": quiet})
        out[self.view] = view
        return out
