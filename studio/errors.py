"""The one error policy: a `StudioError` carries a message fit to show a user as it is.

Every check that refuses user input (a setting, a data file, a model, a busy slot) raises a
subclass; the CLI turns any of them into `error: …` and exit code 2, the web app into a warning
where the user acted (studio/ui/common.py `user_errors`). Anything else is a bug and keeps its traceback
(in a run's error.log, or the server log, with the web user told only that an internal error was logged).
"""

from __future__ import annotations


class StudioError(Exception):
    """A problem with what the user asked for; str(e) says what was wrong and where."""


class ConfigError(StudioError, ValueError):
    """A bad setting: names the key, the value and the allowed range."""


class DataError(StudioError, ValueError):
    """A data file that cannot be used: names the file, and the row or column where it can."""


class ModelError(StudioError, RuntimeError):
    """A model that cannot be resolved or loaded here."""


class EvalError(StudioError, ValueError):
    """An evaluation that cannot run on what it was given."""


class JobBusy(StudioError, RuntimeError):
    """The one job slot is taken; names what holds it."""


class AccessError(StudioError, PermissionError):
    """A path or action the caller may not use."""


class NotFound(StudioError, FileNotFoundError):
    """No run, pool or sweep by that id (or the id is not a plain name); names the id and where it was looked for."""


def user_message(error: BaseException) -> str | None:
    """The message of an error meant for users; None for a bug (which should keep its traceback)."""
    if isinstance(error, StudioError):
        return str(error)
    if isinstance(error, FileNotFoundError):
        return str(error)
    return None


class PromptError(StudioError, ValueError):
    """A chat prompt that cannot be answered as typed (empty, or longer than the model reads)."""
