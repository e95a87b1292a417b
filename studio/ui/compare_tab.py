"""Compare tab: a sweep over one or two settings, then runs side by side — curves, held-out accuracy, probe grid.

The sweep section is a box of its own (sweep_box.py); when a sweep ends, this tab opens its comparison.
Any finished runs can be compared the same way by picking them, with the settings they differ in.
Numbers come from the run folders (eval.json, probes.json) and grids from grid.json files, so a reload
shows the same page. The win rate of one model over another is the box of winrate_box.py.
"""

from __future__ import annotations

import time

import gradio as gr
import pandas as pd

from studio import jobs
from studio.access import require_user
from studio.config import detect_hardware
from studio.data.findings import SMALL_EVAL, accuracy_text, counts
from studio.errors import EvalError
from studio.evaluate import evaluate_run, result_row
from studio.measures import MEASURE_LABELS
from studio.probes import PROBE_MAX_NEW_TOKENS, default_probes, latest_grid, probe_grid, probe_settings, publish_grid
from studio.runs import LIVE_STATES, get_run, list_runs
from studio.sweep import LIVE_STATES as SWEEP_LIVE, sweep_grid, value_text

from .common import TABLE_COLUMNS, Services, header, number, overlay, user_errors
from .form import generation_widget
from .sweep_box import SweepBox, newest_sweep, prompt_lines, slot_note, sweep_frame, sweep_html
from .winrate_box import WinRateBox

MAX_GRID_RUNS = 6  # a wider grid does not read on a screen


def comparable_runs() -> list[str]:
    """Runs with a saved adapter that are not training now (their adapter is final)."""
    return [r.id for r in list_runs() if r.has_adapter and r.state not in LIVE_STATES]


ACCURACIES = ("baseline_accuracy", "tuned_accuracy", "reward_accuracy")
DATA_WARNING = "data warning"


def data_warning(run) -> str | None:
    """What the run's data.json findings say about its held-out numbers: overlap with training, too few pairs."""
    found = counts((run.read_json("data.json") or {}).get("findings") or [])
    words = []
    if found.get("eval_overlap"):
        words.append(f"⚠ held-out data overlapped the training data ({found['eval_overlap']} prompts): "
                     "its accuracy is inflated")
    if found.get("small_eval"):
        words.append(f"⚠ under {SMALL_EVAL} held-out pairs: read the accuracy with its 95% interval")
    return " ".join(words) or None


def _with_intervals(row: dict) -> dict:
    """Accuracies over fewer than SMALL_EVAL pairs as text with their 95% (Wilson) interval."""
    n = row.get("pairs")
    if not n or n >= SMALL_EVAL:
        return row
    return {**row, **{k: accuracy_text(row[k], n) for k in ACCURACIES if isinstance(row.get(k), float)}}


def results_frame(run_ids: list[str]) -> pd.DataFrame:
    """The accuracy table: one row per run, swept values first, evaluation columns when evaluated."""
    rows = []
    for run_id in run_ids:
        try:
            run = get_run(run_id)
            row = _with_intervals(result_row(run))
            warning = data_warning(run)
        except FileNotFoundError:
            continue
        rows.append({**row, DATA_WARNING: warning} if warning else row)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    swept = [k for k in keys if k not in TABLE_COLUMNS and k != DATA_WARNING]
    columns = ["run", *swept, *(k for k in TABLE_COLUMNS if k != "run" and any(k in r for r in rows))]
    columns += [DATA_WARNING] if any(DATA_WARNING in r for r in rows) else []
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


class CompareTab:
    def __init__(self, services: Services):
        self.services = services
        with gr.Tab("Compare", id="compare") as self.tab:
            gr.Markdown("Train a few runs that differ in one or two settings, then read them side by side: "
                        "their curves, how often each prefers the chosen answer on held-out pairs, and their "
                        "answers to the same probe prompts next to the SFT baseline.", elem_classes="ds-caption")
            self.sweep = SweepBox(detect_hardware())
            record = self.sweep.record
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
                    self.max_new_tokens = generation_widget("max_new_tokens", "probes", "compare", slider=(8, 512, 8),
                                                            info="greedy decoding: the same inputs give the same grid")
                    self.grid_btn = gr.Button("Build probe grid", variant="primary", elem_id="compare-grid-btn")
            grid, files = latest_grid()
            self.grid = gr.Dataframe(grid_frame(grid), column_widths=grid_widths(grid), interactive=False, wrap=True,
                                     label="Probe grid",
                                     elem_id="compare-grid", max_height=700)
            self.files = gr.File(files or None, file_count="multiple", label="Probe grid as CSV and Markdown",
                                 interactive=False, elem_id="compare-files")
            self.winrate = WinRateBox(services, self.tab)  # its own section: the preference loop's win rate
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
        self.sweep.wire(self.open_sweep, self.poll_outputs)
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
        """A sweep starts from the Train tab's form, with this tab's probe prompts and length."""
        self.sweep.connect(train, self.tab, self.prompts, self.max_new_tokens)

    @property
    def load_outputs(self) -> list:
        sweep = self.sweep
        return [sweep.status, sweep.table, sweep.view, self.runs, self.table, self.margins_plot, self.loss_plot,
                self.prompts, self.max_new_tokens, self.grid, self.files, self.diff, sweep.start_btn, sweep.note]

    def on_load(self) -> tuple:
        """A fresh page: the newest sweep, its runs (or the newest run) side by side, the newest grid."""
        record = newest_sweep()
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
        sweep = self.sweep
        return [sweep.status, sweep.table, sweep.view, self.runs, self.table, self.margins_plot, self.loss_plot,
                self.grid, self.files, sweep.timer, self.diff, sweep.start_btn, sweep.note]

    # --- handlers ---
    def open_sweep(self, record: dict) -> dict:
        """The comparison of a sweep that just ended: its runs picked, their table and curves, its grid."""
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
