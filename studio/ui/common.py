"""What the tabs share: the app's services (chat engines, tokenizers) and small formatting helpers.

The UI keeps no state of its own that matters: a run lives in its folder and in the engine's
`TrainingJob`; this object only caches what is slow to load (a tokenizer, a chat model).
"""

from __future__ import annotations

import functools
import gc
import html
import inspect
import json
import logging
import threading
import time

import gradio as gr

from studio.chat import ChatEngine
from studio.config import field_names, label_of
from studio.errors import user_message
from studio.models import load_tokenizer, resolve_model
from studio.runs import get_run

from . import charts

log = logging.getLogger("studio.ui")
# How often an idle page looks for work started elsewhere (another browser, the CLI). Each look costs the browser
# about 0.5 s of CPU (it re-reads every output of the event), so after a few that found nothing it looks less often.
IDLE_SECONDS = 5.0
QUIET_SECONDS = 15.0
QUIET_AFTER = 3  # idle looks in a row that changed nothing before the pace drops to QUIET_SECONDS
# What a user sees of a bug: the server log has the traceback; the exception's own words stay there.
INTERNAL_ERROR = "Internal error: it is logged on the server with its traceback. What you entered did not cause it."

# The result tables' headers (Compare's table and its sweep's table): result_row() key -> header; swept
# settings come first, under the labels the Train tab gives them.
TABLE_COLUMNS = {
    "run": "run", "state": "state", "step": "steps", "seconds": "seconds", "loss": "loss", "margins": "train margin",
    "pairs": "pairs", "baseline_accuracy": "baseline acc", "tuned_accuracy": "tuned acc",
    "reward_accuracy": "reward acc", "mean_margin": "eval margin", "kl_drift": "drift",
    "baseline_repetition": "baseline repeat 4g", "repetition": "tuned repeat 4g", "baseline_distinct_2": "baseline distinct-2",
    "distinct_2": "tuned distinct-2", "baseline_mean_words": "baseline words", "mean_words": "tuned words",
    "length_ratio": "length ratio", "chosen_mean_words": "chosen words", "chosen_length_ratio": "length vs chosen",
    "baseline_ended_on_own": "baseline ended", "ended_on_own": "tuned ended",
    "damage": "warning", "error": "error",
}

class ChatEngines:
    """One `ChatEngine` (one base model, one dtype) at a time, loaded on first use.

    Chat asks for the fast chat dtype, evaluation for fp32; a request for another model or dtype
    replaces the engine, so memory holds one copy of base weights.
    """

    def __init__(self):
        self._engine = None
        self._dtype = None
        self._lock = threading.Lock()

    def loaded(self, model_spec: str, dtype=None) -> bool:
        engine = self._engine
        return engine is not None and engine.model_spec == model_spec and self._dtype == dtype

    def get(self, model_spec: str, dtype=None):
        """The engine for `model_spec`; dtype None = the chat dtype for this hardware."""

        with self._lock:
            if not self.loaded(model_spec, dtype):
                self._engine = None
                gc.collect()  # free the old base weights before loading the new ones
                self._engine, self._dtype = ChatEngine(model_spec, dtype=dtype), dtype
            return self._engine


class Services:
    """Slow-to-load things the handlers share, owned by the app built around them."""

    def __init__(self):
        self.chat = ChatEngines()
        self._tokenizers: dict[str, object] = {}
        self._lock = threading.Lock()

    def tokenizer(self, model_spec: str):
        with self._lock:
            if model_spec not in self._tokenizers:
                self._tokenizers[model_spec] = load_tokenizer(resolve_model(model_spec))
            return self._tokenizers[model_spec]


def user_errors(title: str, fallback=None):
    """The one error policy of the web handlers; every handler that can meet a user's mistake wears it.

    - A user's problem (a `StudioError`, or a run or pool deleted meanwhile: `user_message` says which)
      becomes a warning titled `title` naming what was wrong, and `fallback(self, message)` gives the
      handler's outputs (default: change nothing).
    - Anything else is a bug. It is never shown as a warning nor in its own words (they may hold paths or
      secrets): it is logged with its traceback on the server (logger "studio.ui"), and the user sees
      `INTERNAL_ERROR` as an error, so the event fails and no output pretends it worked.
    A generator handler (a streaming one) stays a generator, which is how Gradio tells it streams: a user's
    problem mid-stream yields the fallback's outputs as the last update.
    """
    def wrap(handler):
        def handled(args, error: Exception):
            if isinstance(error, gr.Error):  # a handler's own message for the user, shown as it is
                raise error
            message = user_message(error)
            if message is None:
                log.error("bug in %s (%s)", handler.__qualname__, title, exc_info=error)
                raise gr.Error(INTERNAL_ERROR, title=title, print_exception=False) from error
            gr.Warning(message, title=title)
            return fallback(args[0], message) if fallback else gr.skip()

        if inspect.isgeneratorfunction(handler):
            @functools.wraps(handler)
            def streaming(*args, **kwargs):
                try:
                    yield from handler(*args, **kwargs)
                except Exception as e:  # noqa: BLE001 - sorted by `handled`
                    yield handled(args, e)
            return streaming

        @functools.wraps(handler)
        def inner(*args, **kwargs):
            try:
                return handler(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - sorted by `handled`
                return handled(args, e)
        return inner
    return wrap


def idle_pace(timer, quiet: int, changed: bool) -> tuple[int, dict]:
    """One idle look of a polling `timer`: the new count of looks in a row that changed nothing (`quiet` is the
    old one) and the timer update it calls for: QUIET_SECONDS at the QUIET_AFTER-th, IDLE_SECONDS again at the
    first change after that, otherwise none."""
    if changed:
        return 0, ({timer: gr.Timer(IDLE_SECONDS)} if quiet >= QUIET_AFTER else {})
    quiet += 1
    return quiet, ({timer: gr.Timer(QUIET_SECONDS)} if quiet == QUIET_AFTER else {})


def header(key: str) -> str:
    """A table header: the result's own name, or the label the Train tab gives a setting."""
    return TABLE_COLUMNS.get(key) or (label_of(key) if key in field_names() else key)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def when(timestamp: float | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return time.strftime(fmt, time.localtime(timestamp)) if timestamp else ""


def escape(text: str) -> str:
    return html.escape(str(text))


def number(value, digits: int = 4):
    """A metric rounded for a table cell (None stays empty)."""
    if value is None:
        return None
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    return value


def overlay(run_ids: list[str] | None) -> tuple:
    """Reward-margin and loss figures with one line per run, read from the run folders."""

    series = {}
    for run_id in run_ids or []:
        try:
            series[run_id] = get_run(run_id).metrics()
        except FileNotFoundError:
            continue  # deleted meanwhile
    return (charts.compare_figure(series, "rewards/margins", "Reward margins", "margin"),
            charts.compare_figure(series, "loss", "DPO loss", "loss"))


def key_shortcuts(flag: str, buttons) -> str:
    """The page script that clicks a button on its key, installed once per page (`flag`): only while the button is
    laid out (its tab shows) and the focus is not in a text field, so typing a name never clicks anything.
    `buttons`: (label, elem_id, key) for each."""
    keymap = {key: elem_id for _, elem_id, key in buttons}
    return """
if (!window.%s) {
  window.%s = true;
  const map = %s;
  document.addEventListener('keydown', (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    const t = e.target;
    if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT' || t.isContentEditable)) return;
    const id = map[e.key.toLowerCase()];
    const button = id && document.getElementById(id);
    if (!button || button.offsetParent === null || button.disabled) return;
    e.preventDefault();
    button.click();
  });
}
""" % (flag, flag, json.dumps(keymap))


def chooser(choose, value: str, name: str):
    """A Gradio handler of (pool_id, labeller, item_id) that calls choose(value, pool_id, labeller, item_id, request):
    one per labelling button. Not functools.partial: Gradio finds the gr.Request parameter through the type
    hints, which a partial hides."""
    def handler(pool_id: str | None, labeller: str | None, item_id: str | None, request: gr.Request = None):
        return choose(value, pool_id, labeller, item_id, request)

    handler.__name__ = name
    return handler


def quote_answer(text: str) -> str:
    """Model output as Markdown text: shown as written, never as markup the model happened to write."""
    return html.escape(text or "").replace("\n", "  \n") or "*(empty answer)*"
