"""The status line every long job shows: state, named phase, progress bar, ETA, error. HTML only, no logic."""

from __future__ import annotations

from studio.runs import LIVE_STATES

from .common import duration, escape

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

IDLE = ("No run yet: the demo data of the chosen preset is already loaded, so Start is enough; "
        "to use your own pairs, check a file in the Data tab first.")


def status_html(progress: dict | None, note: str = "") -> str:
    """A run's (or any job's) progress dict as the status line."""
    if not progress:
        body = f'<div class="ds-line"><span class="ds-state">idle</span><span>{escape(IDLE)}</span></div>'
        return f'<div class="ds-status">{body}{_note(note)}</div>'
    state = progress["state"]
    step, total = progress.get("step") or 0, progress.get("total_steps")
    phase = progress.get("phase")
    parts = [f'<span class="ds-state {escape(state)}">{escape(state)}</span>']
    if phase and phase != state and state in LIVE_STATES:
        parts.append(f"<span><b>{escape(phase)}</b></span>")
    if progress.get("run"):
        parts.append(f'<span>run <code>{escape(progress["run"])}</code></span>')
    parts += [f"<span>step <b>{step}</b>/{total if total else '?'}</span>",
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
    return (f'<div class="ds-status"><span class="ds-state failed">not started</span>'
            f'<div class="ds-error">{escape(message)}</div></div>')
