"""What the tabs share: the app's services (chat engines, tokenizers) and small formatting helpers.

The UI keeps no state of its own that matters: a run lives in its folder and in the engine's
`TrainingJob`; this object only caches what is slow to load (a tokenizer, a chat model).
"""

from __future__ import annotations

import functools
import gc
import html
import threading
import time

import gradio as gr

from studio.errors import user_message  # noqa: F401 - the tabs' one import for it

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
        from studio.chat import ChatEngine

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
        from studio.models import load_tokenizer, resolve_model

        with self._lock:
            if model_spec not in self._tokenizers:
                self._tokenizers[model_spec] = load_tokenizer(resolve_model(model_spec))
            return self._tokenizers[model_spec]


def user_errors(title: str, fallback=None):
    """The one error policy of the handlers: a StudioError becomes a warning where the user acted.

    `fallback(self, message)` gives the handler's outputs in that case (default: change nothing).
    Anything else is a bug and propagates with its traceback to the server log.
    """
    def wrap(handler):
        @functools.wraps(handler)
        def inner(*args, **kwargs):
            try:
                return handler(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - sorted by user_message below
                message = user_message(e)
                if message is None:
                    raise
                gr.Warning(message, title=title)
                return fallback(args[0], message) if fallback else gr.skip()
        return inner
    return wrap


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
    from studio.runs import get_run

    from . import charts

    series = {}
    for run_id in run_ids or []:
        try:
            series[run_id] = get_run(run_id).metrics()
        except FileNotFoundError:
            continue  # deleted meanwhile
    return (charts.compare_figure(series, "rewards/margins", "Reward margins", "margin"),
            charts.compare_figure(series, "loss", "DPO loss", "loss"))
