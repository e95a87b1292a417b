"""Runs tab: every run under STUDIO_HOME with its preset, key settings, state, final metrics and time.

Select runs to overlay their reward margins and loss; download a run's adapter as a zip; delete a run
after a confirmation. Everything is read from the run folders (`Run.summary()`), nothing is cached.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from studio.access import require_user
from studio.export import zip_adapter
from studio.runs import delete_run, get_run, list_runs

from .common import duration, number, overlay, user_errors, user_message, when

COLUMNS = {  # Run.summary() key (model: with its method) -> column header, and the column widths
    "run": "run", "preset": "preset", "state": "state", "model": "model", "beta": "beta", "learning_rate": "lr",
    "step": "steps", "loss": "loss", "margins": "margin", "accuracy": "accuracy", "eval_margins": "eval margin",
    "started": "started", "seconds": "time",
}
WIDTHS = ["275px", "135px", "85px", "150px", "55px", "75px", "60px", "70px", "70px", "95px", "110px", "110px", "65px"]


def runs_frame() -> pd.DataFrame:
    rows = []
    for run in list_runs():
        s = run.summary()
        s["model"] = f"{s.get('model')} · {s.get('method')}"
        s["started"] = when(s.get("started"), "%m-%d %H:%M")
        s["seconds"] = duration(s.get("seconds")) if s.get("seconds") is not None else ""
        for key in ("beta", "learning_rate", "loss", "margins", "accuracy", "eval_margins"):
            s[key] = number(s.get(key))
        rows.append([s.get(key) for key in COLUMNS])
    return pd.DataFrame(rows, columns=list(COLUMNS.values()))


class RunsTab:
    def __init__(self):
        with gr.Tab("Runs", id="runs") as self.tab:
            with gr.Row():
                gr.Markdown("Every run under STUDIO_HOME. Click a row to select it.", elem_classes="ds-caption")
                self.refresh_btn = gr.Button("↻ Refresh", scale=0, min_width=100)
            self.table = gr.Dataframe(runs_frame(), interactive=False, max_height=360, column_widths=WIDTHS,
                                      elem_id="runs-table", label="Runs")
            with gr.Row(equal_height=True):
                ids = [run.id for run in list_runs()]
                self.selected = gr.Dropdown(ids, value=ids[0] if ids else None, label="Selected run", scale=4,
                                            elem_id="runs-selected")
                self.download_btn = gr.Button("Download adapter (.zip)", scale=1, elem_id="runs-download")
                self.delete_btn = gr.Button("Delete run…", variant="stop", scale=1, elem_id="runs-delete")
            self.zip_file = gr.File(label="Adapter zip", visible=False, interactive=False)
            with gr.Group(visible=False) as self.confirm_box:
                self.confirm_text = gr.Markdown()
                with gr.Row():
                    self.confirm_btn = gr.Button("Yes, delete it", variant="stop", elem_id="runs-delete-confirm")
                    self.cancel_btn = gr.Button("Cancel")
            gr.Markdown("#### Compare runs")
            self.compare = gr.Dropdown(ids, value=ids[:1], multiselect=True, label="Runs to overlay",
                                       elem_id="runs-compare")
            with gr.Row():
                margins, loss = overlay(ids[:1])
                self.margins_plot = gr.Plot(margins, show_label=False, elem_id="compare-margins")
                self.loss_plot = gr.Plot(loss, show_label=False, elem_id="compare-loss")
        self._wire()

    @property
    def refresh_outputs(self) -> list:
        return [self.table, self.selected, self.compare, self.margins_plot, self.loss_plot]

    def _wire(self) -> None:
        gr.on([self.refresh_btn.click, self.tab.select], self.refresh, inputs=[self.selected, self.compare],
              outputs=self.refresh_outputs, api_name="runs", concurrency_limit=None, show_progress="hidden")
        self.table.select(self.pick_row, outputs=self.selected, api_visibility="private")
        self.compare.change(overlay, inputs=self.compare, outputs=[self.margins_plot, self.loss_plot],
                            api_name="compare_runs", concurrency_limit=None, show_progress="hidden")
        self.download_btn.click(self.download, inputs=self.selected, outputs=self.zip_file, api_name="download_adapter")
        self.delete_btn.click(self.ask_delete, inputs=self.selected, outputs=[self.confirm_box, self.confirm_text],
                              api_visibility="private")
        self.cancel_btn.click(lambda: gr.Group(visible=False), outputs=self.confirm_box, api_visibility="private")
        self.confirm_btn.click(self.delete, inputs=[self.selected, self.compare],
                               outputs=[self.confirm_box, *self.refresh_outputs], api_name="delete_run")

    def connect(self, train) -> None:
        train.runs_changed.change(self.refresh, inputs=[self.selected, self.compare], outputs=self.refresh_outputs,
                                  api_visibility="private", show_progress="hidden", concurrency_limit=None)

    # --- handlers ---
    def refresh(self, selected: str | None, compare: list[str] | None):
        ids = [run.id for run in list_runs()]
        kept = [run_id for run_id in (compare or []) if run_id in ids] or ids[:1]
        return (runs_frame(), gr.Dropdown(choices=ids, value=selected if selected in ids else (ids[0] if ids else None)),
                gr.Dropdown(choices=ids, value=kept), *overlay(kept))

    def pick_row(self, event: gr.SelectData):
        row = event.row_value or []
        return gr.Dropdown(value=row[0]) if row else gr.skip()


    def download(self, run_id: str | None, request: gr.Request = None):
        if not run_id:
            gr.Warning("Select a run first.")
            return gr.File(visible=False)
        try:
            require_user(request, "export runs")
            path = zip_adapter(get_run(run_id))
        except Exception as e:  # noqa: BLE001 - a user's problem becomes a warning; a bug propagates
            if user_message(e) is None:
                raise
            gr.Warning(user_message(e))
            return gr.File(value=None, visible=False)
        return gr.File(value=str(path), visible=True)

    def ask_delete(self, run_id: str | None):
        if not run_id:
            gr.Warning("Select a run first.")
            return gr.Group(visible=False), ""
        return gr.Group(visible=True), (f"Delete run **{run_id}** and its folder (adapter, metrics, config)? "
                                        "This cannot be undone.")

    @user_errors("Cannot delete")
    def _delete(self, run_id: str | None, request=None) -> None:
        require_user(request, "delete runs")
        delete_run(get_run(run_id))
        gr.Info(f"Deleted run {run_id}.")

    def delete(self, run_id: str | None, compare: list[str] | None, request: gr.Request = None):
        self._delete(run_id, request)
        return (gr.Group(visible=False), *self.refresh(None, [r for r in (compare or []) if r != run_id]))
