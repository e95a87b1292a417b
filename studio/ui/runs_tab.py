"""Runs tab: every run under STUDIO_HOME with its preset, key settings, state, final metrics and time.

Select runs to overlay their reward margins and loss; download a run's adapter as a zip; resume a
stopped, interrupted or failed run from its last checkpoint; delete a run after a confirmation.
Everything is read from the run folders (`Run.summary()`), nothing is cached.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from studio.access import require_user
from studio import jobs, refcache
from studio.errors import AccessError
from studio.export import MARKER, export_run, exports_dir, list_exports, zip_adapter
from studio.hub import push_to_hub
from studio.files import check_data_source
from studio.runs import delete_run, get_run, list_runs
from studio.training import TrainingJob

from .common import duration, number, overlay, user_errors, when
from .loop import lineage_markdown

# Run.summary() key (model: with its method) -> column header, and the column widths. The state comes right after
# the run id: on a phone (390 px) those two are what the first screen shows of the table.
COLUMNS = {
    "run": "run", "state": "state", "preset": "preset", "model": "model", "objective": "objective", "beta": "beta",
    "learning_rate": "lr", "step": "steps", "loss": "loss", "margins": "margin", "accuracy": "accuracy",
    "eval_margins": "eval margin", "started": "started", "seconds": "time",
}
WIDTHS = ["230px", "85px", "135px", "150px", "80px", "55px", "75px", "60px", "70px", "70px", "95px", "110px", "110px",
          "65px"]


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


def refcache_markdown() -> str:
    """What the reference log-prob cache holds, in words."""
    used = refcache.usage()
    if not used["entries"]:
        return "The reference log-prob cache is empty: the next DPO or KTO run computes the base model's scores."
    return (f"The reference log-prob cache holds **{used['entries']}** entr{'y' if used['entries'] == 1 else 'ies'} "
            f"({used['bytes'] / 1024:.1f} KiB): DPO and KTO runs on the same model, template, data and max length "
            "reuse them instead of running the base model over the data again.")


def resume_info(run_id: str | None) -> tuple[bool, str]:
    """Whether the run can go on from a checkpoint, and the line saying why (not)."""
    if not run_id:
        return False, ""
    try:
        run = get_run(run_id)
    except FileNotFoundError:
        return False, ""
    refusal = run.resume_refusal()
    if refusal is not None:
        return False, f"Resume: {refusal}"
    progress, (_, step) = run.progress(), run.checkpoint()
    return True, (f"Run {run.id} is {progress['state']} at step {progress['step']}/{progress['total_steps'] or '?'}: "
                  f"**Resume run** goes on from its checkpoint at step {step}, with its own settings, in its own folder.")


def resume_state(run_id: str | None) -> tuple[gr.Button, str]:
    """The Resume button, enabled only for a run that can go on from a checkpoint, and the line saying why (not).
    (An update for handlers only: a gr.Button made while the tab is laid out would be a button on the page.)"""
    ok, note = resume_info(run_id)
    return gr.Button(interactive=ok), note


# The exports a browser can download, one file list per kind (file names repeat across kinds: README.md, Modelfile).
DOWNLOAD_KINDS = (("adapter", None, "adapter (PEFT folder)"), ("merged", None, "merged model (16-bit safetensors)"),
                  ("gguf", "f16", "GGUF f16 + Modelfile"), ("gguf", "q8_0", "GGUF q8_0 + Modelfile"))


# Export folders already registered with Gradio as static paths (see serve_in_place).
_SERVED: set[Path] = set()


def serve_in_place(folder: Path) -> None:
    """Have Gradio link an export folder's files where they are. Otherwise every File value is hashed (sha256 of
    the whole file) and copied into Gradio's cache on the server's event loop each time a list is sent: about
    690 MB for a merged and two GGUF exports of the embedded model, seconds in which no other request of any
    user is answered. Served in place, each link is a download from the exports folder, which the guard keeps to
    those who may download; the folders are registered one by one so that probe grids under exports/grids stay
    copied and readable as before."""
    if folder not in _SERVED:
        gr.set_static_paths([folder])
        _SERVED.add(folder)


def export_files(run_id: str | None) -> list[list[str]]:
    """For each kind in DOWNLOAD_KINDS, the files of the run's newest export of it under STUDIO_HOME/exports
    (the folder the app serves files from; an export written elsewhere with --out is not offered), each served
    from where it lies (serve_in_place)."""
    out: list[list[str]] = [[] for _ in DOWNLOAD_KINDS]
    if not run_id:
        return out
    try:
        records = list_exports(get_run(run_id))
    except FileNotFoundError:
        return out
    root = exports_dir().resolve()
    for i, (fmt, quant, _) in enumerate(DOWNLOAD_KINDS):
        for r in records:  # newest first
            if r.get("format") != fmt or (quant and r.get("quant") != quant) or not r.get("exists"):
                continue
            folder = Path(r["path"]).resolve()
            if root in folder.parents:
                serve_in_place(folder)
                out[i] = [str(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MARKER]
            break
    return out


def exports_frame(run_id: str | None) -> pd.DataFrame:
    """What was exported from a run, where, and its size (from the run's exports.json)."""
    columns = ["format", "where", "size", "seconds", "created"]
    if not run_id:
        return pd.DataFrame([], columns=columns)
    try:
        records = list_exports(get_run(run_id))
    except FileNotFoundError:
        records = []
    rows = [[r.get("format", "") + (f" {r['quant']}" if r.get("quant") and r.get("format") == "gguf" else ""),
             r.get("url") or r.get("path"), f"{(r.get('bytes') or 0) / 2**20:.1f} MiB" if r.get("bytes") else "",
             r.get("seconds"), when(r.get("created"), "%m-%d %H:%M")] for r in records]
    return pd.DataFrame(rows, columns=columns)


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
                resumable, note = resume_info(ids[0] if ids else None)
                self.resume_btn = gr.Button("Resume run", scale=1, elem_id="runs-resume", interactive=resumable)
                self.delete_btn = gr.Button("Delete run…", variant="stop", scale=1, elem_id="runs-delete")
            self.lineage = gr.Markdown(lineage_markdown(ids[0] if ids else None), elem_id="runs-lineage")
            self.resume_note = gr.Markdown(note, elem_classes="ds-caption", elem_id="runs-resume-note")
            self.picked = gr.State(None)  # the run the download links are for
            self.zip_file = gr.File(label="Adapter zip", visible=False, interactive=False)
            with gr.Group(visible=False) as self.confirm_box:
                self.confirm_text = gr.Markdown()
                with gr.Row():
                    self.confirm_btn = gr.Button("Yes, delete it", variant="stop", elem_id="runs-delete-confirm")
                    self.cancel_btn = gr.Button("Cancel")
            with gr.Accordion("Export the selected run", open=False, elem_id="runs-export-box"):
                gr.Markdown("**adapter**: the PEFT folder · **merged**: the adapter merged into 16-bit weights, "
                            "loadable with transformers alone · **gguf**: one file for Ollama, llama.cpp and LM Studio, "
                            "with an Ollama Modelfile (the chat's greedy settings, the context, the licence). Exports "
                            "wait for a training to end, and every file is listed below to download.",
                            elem_classes="ds-caption")
                with gr.Row(equal_height=True):
                    self.export_format = gr.Radio(["adapter", "merged", "gguf"], value="merged", label="Format",
                                                  elem_id="runs-export-format")
                    self.export_quant = gr.Radio(["f16", "q8_0"], value="f16", label="GGUF type", visible=False,
                                                 elem_id="runs-export-quant")
                    self.export_btn = gr.Button("Export", variant="primary", elem_id="runs-export")
                with gr.Row(equal_height=True):
                    self.push_repo = gr.Textbox(label="Hub repo (owner/name)", elem_id="runs-push-repo", scale=2)
                    self.push_token = gr.Textbox(label="Hub token (or HF_TOKEN on the server)", type="password",
                                                 elem_id="runs-push-token", scale=2)
                    self.push_btn = gr.Button("Push to the Hub", elem_id="runs-push", scale=1)
                self.exports = gr.Dataframe(exports_frame(ids[0] if ids else None), interactive=False,
                                            label="Exports of this run", elem_id="runs-exports")
                # Gradio's own download links (name, size, link per file), from STUDIO_HOME/exports only.
                self.downloads = [gr.File(label=f"Download: {label}", file_count="multiple", interactive=False,
                                          visible=False, elem_id=f"runs-download-{fmt}{'-' + quant if quant else ''}")
                                  for fmt, quant, label in DOWNLOAD_KINDS]
            with gr.Accordion("Reference log-prob cache", open=False, elem_id="runs-refcache-box"):
                gr.Markdown("DPO and KTO score every training answer with the frozen base model once, before the "
                            "first step, and keep the scores under STUDIO_HOME/refcache, keyed by the model's files, "
                            "the chat template, the data and the max length: a sweep, a resume or a later run on "
                            "the same data reuses them; any change computes anew.", elem_classes="ds-caption")
                with gr.Row(equal_height=True):
                    self.refcache_note = gr.Markdown(refcache_markdown(), elem_id="runs-refcache-note")
                    self.refcache_btn = gr.Button("Clear the cache", scale=0, min_width=160, elem_id="runs-refcache-clear")
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
        return [self.table, self.selected, self.compare, self.margins_plot, self.loss_plot, self.resume_btn,
                self.resume_note]

    def _wire(self) -> None:
        gr.on([self.refresh_btn.click, self.tab.select], self.refresh, inputs=[self.selected, self.compare],
              outputs=self.refresh_outputs, api_name="runs", concurrency_limit=None, show_progress="hidden")
        self.table.select(self.pick_row, outputs=self.selected, api_visibility="private")
        self.compare.change(overlay, inputs=self.compare, outputs=[self.margins_plot, self.loss_plot],
                            api_name="compare_runs", concurrency_limit=None, show_progress="hidden")
        self.download_btn.click(self.download, inputs=self.selected, outputs=self.zip_file, api_name="download_adapter")
        self.selected.change(resume_state, inputs=self.selected, outputs=[self.resume_btn, self.resume_note],
                             api_name="resume_state", show_progress="hidden", concurrency_limit=None)
        # Said at once (before the checks and the start, which take a moment), then the outcome.
        self.resume_btn.click(lambda run_id: (gr.Button(interactive=False), f"Resuming run {run_id}…"),
                              inputs=self.selected, outputs=[self.resume_btn, self.resume_note], queue=False,
                              api_visibility="private", show_progress="hidden")
        self.resumed = self.resume_btn.click(self.resume, inputs=[self.selected, self.compare],
                                             outputs=self.refresh_outputs, api_name="resume_run",
                                             concurrency_limit=None, show_progress="hidden")
        self.delete_btn.click(self.ask_delete, inputs=self.selected, outputs=[self.confirm_box, self.confirm_text],
                              api_visibility="private")
        self.cancel_btn.click(lambda: gr.Group(visible=False), outputs=self.confirm_box, api_visibility="private")
        self.selected.change(exports_frame, inputs=self.selected, outputs=self.exports, api_name="run_exports",
                             show_progress="hidden", concurrency_limit=None)
        self.selected.change(lineage_markdown, inputs=self.selected, outputs=self.lineage, api_name="run_lineage",
                             show_progress="hidden", concurrency_limit=None)
        # Every refresh sets the dropdown again and fires its .change although the pick is the same (up to 17
        # times in one training run). Download links replaced at each of those vanish under a user's click, so
        # they (and the zip link, which belongs to the run it was made for) follow only a real change of pick:
        # a State's .change fires only when its value differs.
        self.selected.change(lambda run_id: run_id, inputs=self.selected, outputs=self.picked,
                             api_visibility="private", show_progress="hidden", concurrency_limit=None)
        self.picked.change(self.download_lists, inputs=self.selected, outputs=self.downloads,
                           api_name="export_downloads", show_progress="hidden", concurrency_limit=None)
        self.picked.change(lambda: gr.File(value=None, visible=False), outputs=self.zip_file,
                           api_visibility="private", show_progress="hidden", queue=False)
        self.export_format.change(lambda fmt: gr.Radio(visible=fmt == "gguf"), inputs=self.export_format,
                                  outputs=self.export_quant, queue=False, api_visibility="private",
                                  show_progress="hidden")
        self.export_btn.click(self.export, inputs=[self.selected, self.export_format, self.export_quant],
                              outputs=self.exports, api_name="export_run", concurrency_limit=1, concurrency_id="export"
                              ).then(self.download_lists, inputs=self.selected, outputs=self.downloads,
                                     api_visibility="private", show_progress="hidden")
        self.push_btn.click(self.push, inputs=[self.selected, self.push_repo, self.push_token], outputs=self.exports,
                            api_name="push_run", concurrency_limit=1, concurrency_id="export")
        self.confirm_btn.click(self.delete, inputs=[self.selected, self.compare],
                               outputs=[self.confirm_box, *self.refresh_outputs], api_name="delete_run")

        self.refcache_btn.click(self.clear_refcache, outputs=self.refcache_note, api_name="clear_refcache")
        self.tab.select(refcache_markdown, outputs=self.refcache_note, api_visibility="private",
                        show_progress="hidden", queue=False)

    @user_errors("Cannot clear the cache")
    def clear_refcache(self, request: gr.Request = None) -> str:
        require_user(request, "clear the reference cache")
        removed = refcache.clear()
        gr.Info(f"Cleared the reference log-prob cache ({removed['entries']} entries, "
                f"{removed['bytes'] / 1024:.1f} KiB).")
        return refcache_markdown()

    def connect(self, train) -> None:
        train.runs_changed.change(self.refresh, inputs=[self.selected, self.compare], outputs=self.refresh_outputs,
                                  api_visibility="private", show_progress="hidden", concurrency_limit=None)
        # A resumed run shows on the Train tab at once, not at its next idle look (5-15 s later).
        self.resumed.success(train.poll, inputs=train.view, outputs=train.poll_outputs, api_visibility="private",
                             show_progress="hidden", concurrency_limit=None)

    # --- handlers ---
    def refresh(self, selected: str | None, compare: list[str] | None):
        ids = [run.id for run in list_runs()]
        kept = [run_id for run_id in (compare or []) if run_id in ids] or ids[:1]
        selected = selected if selected in ids else (ids[0] if ids else None)
        return (runs_frame(), gr.Dropdown(choices=ids, value=selected), gr.Dropdown(choices=ids, value=kept),
                *overlay(kept), *resume_state(selected))

    @user_errors("Cannot resume")
    def resume(self, run_id: str | None, compare: list[str] | None, request: gr.Request = None):
        """Continue the selected run from its last checkpoint on the job slot; the Train tab follows it."""
        require_user(request, "resume runs")
        if not run_id:
            gr.Warning("Select a run first.")
            return gr.skip()
        run = get_run(run_id)
        cfg = run.config()
        for source in (cfg.data, cfg.eval_data):  # before resume() reads them: the web app reads only its own folders
            if source:
                check_data_source(source)
        job = TrainingJob.resume(run)  # refused here when it is done, running, diverged or lost its data
        job.start()
        said = f"Resuming run {run_id} from step {job.step} of {job.total_steps or '?'}: the Train tab follows it."
        gr.Info(said)
        # The table shows the run going on; the choices and the curves (cut back to the checkpoint, where the run
        # stopped) are unchanged, so the page does not redraw them while the Train tab takes over.
        button, _ = resume_state(run_id)  # not its line: it would call the live run "still loading"
        return runs_frame(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), button, said

    @user_errors("Cannot export")
    def export(self, run_id: str | None, fmt: str, quant: str, progress=gr.Progress(), request: gr.Request = None):
        require_user(request, "export runs")
        run = get_run(run_id)

        def work(job):
            def report(phase, done=0, total=None):
                job.report(phase, done, total)
                progress((done, total) if total else None, desc=phase)
            return export_run(run, fmt, quant=quant if fmt == "gguf" else None, progress=report,
                              should_stop=job.stopping)

        record = jobs.run("export", f"exporting {run.id} as {fmt}", work)
        gr.Info(f"Exported {run.id} as {fmt}: {record['path']} ({record['bytes'] / 2**20:.1f} MiB in "
                f"{record['seconds']:.0f} s); its files are listed below to download.")
        return exports_frame(run_id)

    def download_lists(self, run_id: str | None, request: gr.Request = None) -> list:
        """One file list per export kind, each shown only when it has files. Downloads are exports: who may not
        export sees none (the one place to gate them)."""
        try:
            require_user(request, "download exports")
        except AccessError:
            return [gr.File(value=None, visible=False) for _ in DOWNLOAD_KINDS]
        return [gr.File(value=files or None, visible=bool(files)) for files in export_files(run_id)]

    @user_errors("Cannot push")
    def push(self, run_id: str | None, repo: str, token: str, progress=gr.Progress(), request: gr.Request = None):
        require_user(request, "push to the Hub")
        run = get_run(run_id)
        # The token lives only in this call: never in a file, a log or a message (hub.py scrubs it from errors).
        url = jobs.run("push", f"pushing {run.id} to {repo}",
                       lambda job: push_to_hub(run, (repo or "").strip(), token=token or None,
                                               progress=job.report, should_stop=job.stopping))
        gr.Info(f"Pushed {run.id}: {url}")
        return exports_frame(run_id)

    def pick_row(self, event: gr.SelectData):
        row = event.row_value or []
        return gr.Dropdown(value=row[0]) if row else gr.skip()


    @user_errors("Cannot download", lambda self, message: gr.File(value=None, visible=False))
    def download(self, run_id: str | None, request: gr.Request = None):
        if not run_id:
            gr.Warning("Select a run first.")
            return gr.File(visible=False)
        require_user(request, "export runs")
        path = zip_adapter(get_run(run_id))
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
