"""`JobBox`: Start / Stop, a status line and a timer for one kind of job on the one slot (studio/jobs.py).

The box keeps the latest job it started; the app owns the box, so every browser sees that job. It is
generic: the Grow pairs tab's boxes (loop.py) and the Compare tab's win-rate box (winrate_box.py) are
subclasses that say how to start a job and what came of it.
"""

from __future__ import annotations

import gradio as gr

from studio import jobs
from studio.access import require_user

from .common import duration, escape, user_errors
from .status import STATUS_CSS, error_html

POLL_SECONDS = 1.0  # only while a box's job runs
UNITS = {"generating": "prompts", "judging": "pairs", "rubric": "pairs"}  # what a phase counts


def job_html(progress: dict | None, note: str = "", idle: str = "") -> str:
    """A job's progress dict (studio.jobs.Job.progress) as the status line: state, phase, done/total, ETA."""
    if not progress:
        return f'<div class="ds-status"><span class="ds-muted">{escape(idle or "Nothing started yet.")}</span></div>'
    state, phase = progress["state"], progress.get("phase") or ""
    live = state in ("queued", "running")
    done, total = progress.get("done") or 0, progress.get("total")
    parts = [f'<span class="ds-state {escape(state)}">{escape(state)}</span>',
             f"<span>{escape(progress.get('title', ''))}</span>"]
    if live and phase and phase != state:
        parts.append(f"<span><b>{escape(phase)}</b></span>")
    if total:
        parts.append(f"<span><b>{done}</b>/{total} {escape(UNITS.get(phase, ''))}</span>")
    parts.append(f"<span>elapsed {duration(progress.get('elapsed'))}</span>")
    if live:
        eta = progress.get("eta")
        parts.append(f"<span>ETA {duration(eta) if eta is not None else '…'}</span>")
    pct = 100 if state == "done" else (100 * done / total if total else 0)
    bar = f'<div class="ds-bar"><div style="width:{pct:.0f}%"></div></div>'
    error = f'<div class="ds-error">{escape(progress["error"])}</div>' if progress.get("error") else ""
    extra = f'<div style="margin-top:6px">{escape(note)}</div>' if note else ""
    return f'<div class="ds-status"><div class="ds-line">{"".join(parts)}</div>{bar}{error}{extra}</div>'


class JobBox:
    """Start / Stop, a status line and a timer for one kind of job; subclasses say how to start and what came of it."""

    kind = "job"
    idle = "Nothing started since the app started."
    stopping_note = "Stopping after the current batch; what is done stays on disk."

    def __init__(self):
        self.job: jobs.Job | None = None  # the latest job this box started (any browser)

    def job_widgets(self, elem: str, start_label: str) -> None:
        with gr.Row():
            self.start_btn = gr.Button(start_label, variant="primary", elem_id=f"{elem}-start", min_width=160)
            self.stop_btn = gr.Button("Stop", variant="stop", elem_id=f"{elem}-stop", interactive=False, min_width=90)
        self.status = gr.HTML(self.render(None), elem_id=f"{elem}-status", css_template=STATUS_CSS, js_on_load=None)
        self.timer = gr.Timer(POLL_SECONDS, active=False)
        self.finished = gr.State("")  # set when this page sees the box's job end: other widgets refresh on it

    @property
    def job_outputs(self) -> list:
        return [self.status, self.timer, self.start_btn, self.stop_btn, self.finished]

    def wire_job(self, api: str, tab=None) -> None:
        self.timer.tick(self.poll, outputs=self.job_outputs, api_name=f"poll_{api}", show_progress="hidden",
                        concurrency_limit=None, trigger_mode="always_last")
        self.stop_btn.click(self.stop, outputs=self.status, api_name=f"stop_{api}", concurrency_limit=None,
                            show_progress="hidden")
        if tab is not None:  # a page opened (or a tab shown) while the job runs starts following it
            tab.select(self.look, outputs=self.job_outputs, api_visibility="private", show_progress="hidden",
                       concurrency_limit=None)

    # --- what subclasses say ---
    def progress(self, job) -> dict:
        return job.progress()

    def render(self, progress: dict | None, note: str = "") -> str:
        return job_html(progress, note, self.idle)

    def outcome(self, job) -> str:
        """A sentence on what the ended job made (the status line shows its error)."""
        return ""

    # --- handlers ---
    def launch(self, job: jobs.Job) -> list:
        """Take the slot (JobBusy when taken) and follow the job from this page."""
        job.start()
        self.job = job
        return self._view()

    def _view(self, ended_key: bool = False) -> list:
        job = self.job
        if job is None:
            return [self.render(None), gr.Timer(active=False), gr.Button(interactive=True),
                    gr.Button(interactive=False), gr.skip()]
        live = job.is_alive()
        note = "" if live else self.outcome(job)
        key = f"{job.kind}:{job.started_at}:{job.state}"
        return [self.render(self.progress(job), note), gr.Timer(active=live), gr.Button(interactive=not live),
                gr.Button(interactive=live), key if ended_key and not live else gr.skip()]

    def poll(self) -> list:
        return self._view(ended_key=True)

    def look(self) -> list:
        return self._view()

    @user_errors("Cannot stop")
    def stop(self, request: gr.Request = None):
        require_user(request, f"stop a {self.kind} job")
        job = self.job
        if job is None or not job.is_alive():
            gr.Info("Nothing of this kind is running.")
            return gr.skip()
        job.stop()
        return self.render(self.progress(job), self.stopping_note)

    def refused(self, message: str) -> dict:
        return {self.status: error_html(message)}
