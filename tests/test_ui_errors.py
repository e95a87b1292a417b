"""The web error policy (studio/ui/common.py `user_errors`): a user's mistake is a warning naming it; a bug is
logged with its traceback and shown only as a generic internal error, never as a warning nor in its own words."""

import inspect
import logging
import warnings

import gradio as gr
import pytest

from studio.errors import ConfigError, DataError
from studio.ui.common import INTERNAL_ERROR, user_errors


class Box:
    @user_errors("Cannot act", lambda self, message: f"status: {message}")
    def act(self, error=None):
        if error is not None:
            raise error
        return "done"

    @user_errors("Cannot act")
    def act_quietly(self, error=None):
        raise error

    @user_errors("Cannot stream", lambda self, message: {"status": message})
    def stream(self, error=None):
        yield {"status": "first"}
        if error is not None:
            raise error
        yield {"status": "last"}


def test_a_users_mistake_becomes_a_warning_naming_it_and_the_fallbacks_outputs():
    box = Box()
    assert box.act() == "done"
    problem = DataError("pairs.jsonl row 3: no 'chosen' field")
    with pytest.warns(UserWarning, match="row 3: no 'chosen' field"):  # gr.Warning outside a request warns
        assert box.act(problem) == f"status: {problem}"
    with pytest.warns(UserWarning, match="no run"):  # a run deleted meanwhile is the user's problem too
        assert box.act_quietly(FileNotFoundError("no run 'r1'")) == gr.skip()


@pytest.mark.parametrize("bug", [KeyError("/srv/studio/runs/r1/config.json"), ZeroDivisionError("division by zero"),
                                 PermissionError("[Errno 13] /root/.cache/token")])
def test_a_bug_is_logged_with_its_traceback_and_shown_only_as_an_internal_error(caplog, bug):
    box = Box()
    with caplog.at_level(logging.ERROR, logger="studio.ui"), warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning here would fail the test: a bug is never a user warning
        with pytest.raises(gr.Error) as raised:
            box.act(bug)
    assert raised.value.message == INTERNAL_ERROR and raised.value.title == "Cannot act"
    assert str(bug) not in str(raised.value)  # its own words (paths, secrets) stay on the server
    record = caplog.records[-1]
    assert record.name == "studio.ui" and record.exc_info[1] is bug
    assert "Traceback" in caplog.text and "Box.act" in caplog.text


def test_a_handlers_own_gradio_error_passes_as_it_is():
    own = gr.Error("Pick a run first.")
    with pytest.raises(gr.Error) as raised:
        Box().act(own)
    assert raised.value is own


def test_a_streaming_handler_stays_a_generator_and_follows_the_same_policy(caplog):
    box = Box()
    assert inspect.isgeneratorfunction(Box.stream)  # how Gradio tells a streaming handler
    assert list(box.stream()) == [{"status": "first"}, {"status": "last"}]
    with pytest.warns(UserWarning, match="beta must be above 0"):
        assert list(box.stream(ConfigError("beta must be above 0"))) == [{"status": "first"},
                                                                        {"status": "beta must be above 0"}]
    seen = []
    with caplog.at_level(logging.ERROR, logger="studio.ui"), warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(gr.Error, match="Internal error"):
            for update in box.stream(RuntimeError("CUDA error: device-side assert")):
                seen.append(update)
    assert seen == [{"status": "first"}]
    assert caplog.records[-1].exc_info[0] is RuntimeError


def test_through_the_app_a_bug_reaches_the_browser_only_as_the_internal_error(launched_app, monkeypatch, caplog):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    import studio.ui.winrate_box as winrate_box

    url, _ = launched_app
    client = Client(url, verbose=False)
    # A user's mistake (a pool that is not there): a warning on the page, the outputs left as they were; no error.
    client.predict("no-such-pool", None, api_name="/read_winrate")

    def broken(pool, labeller=None):
        raise KeyError("/srv/studio/pools/secret-token-abc/pool.json")

    monkeypatch.setattr(winrate_box, "measure", broken)  # a fault injected into the real app, in this process
    with caplog.at_level(logging.ERROR, logger="studio.ui"), pytest.raises(AppError) as raised:
        client.predict("any-pool", None, api_name="/read_winrate")
    assert INTERNAL_ERROR in str(raised.value) and "secret-token" not in str(raised.value)
    assert any(r.exc_info and r.exc_info[0] is KeyError for r in caplog.records), caplog.text
