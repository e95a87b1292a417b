"""Issue 21: settings sent through the API are checked exactly as the CLI checks them, before any run folder exists:
whole numbers refuse NaN, inf, text and 2.5 (never rounded), backend unsloth without CUDA and a LoRA target the
model lacks are refusals, not failed runs."""

import contextlib
import html
import io
import json
import math

import httpx
import pytest

from studio.cli import main as cli_main
from studio.runs import list_runs
from studio.training import TrainingJob

CASES = [  # (setting, value through the API, words of the refusal, the value through the CLI's --set)
    ("lora_r", 2.5, "lora_r must be int, got", "2.5"),
    ("lora_r", math.nan, "lora_r must be int, got", "nan"),
    ("max_steps", math.inf, "max_steps must be int, got", "inf"),
    ("per_device_train_batch_size", "two", "per_device_train_batch_size must be int, got 'two'", "two"),
    ("learning_rate", "fast", "learning_rate must be float, got 'fast'", "fast"),
    ("backend", "unsloth", "backend unsloth needs a CUDA GPU", "unsloth"),
    ("lora_target_modules", ["not_a_module"], "not_a_module", "not_a_module"),
]


def start(url: str, **fields) -> str:
    """The Start button's status through raw HTTP (JSON with NaN and Infinity, as a client may send them)."""
    r = httpx.post(f"{url}gradio_api/call/v2/start", content=json.dumps(fields),  # allow_nan: NaN, Infinity
                   headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 200, r.text
    with httpx.stream("GET", f"{url}gradio_api/call/start/{r.json()['event_id']}", timeout=300) as s:
        text = "".join(s.iter_text())
    assert "event: complete" in text, text[-2000:]
    return html.unescape(text)


def cli_refusal(home, data, key, value, monkeypatch) -> tuple[int, str]:
    monkeypatch.setenv("STUDIO_HOME", str(home))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli_main(["train", "--data", str(data), "--set", f"{key}={value}", "--quiet"])
    return code, err.getvalue()


@pytest.mark.parametrize(("key", "value", "words", "cli_value"), CASES, ids=[f"{c[0]}={c[1]}" for c in CASES])
def test_a_bad_setting_is_refused_by_name_through_the_api_and_the_cli(launched_app, style_pairs, monkeypatch, key,
                                                                      value, words, cli_value):
    url, home = launched_app
    before = {r.id for r in list_runs()}
    status = start(url, data=str(style_pairs), **{key: value})
    assert words in status and "Traceback" not in status and "not started" in status, status
    if isinstance(value, float):  # the value as it was sent, not rounded to a whole number
        assert f"got {value!r}" in status
    assert TrainingJob.active() is None and {r.id for r in list_runs()} == before  # no run folder
    code, stderr = cli_refusal(home, style_pairs, key, cli_value, monkeypatch)
    assert code == 2 and words in stderr and "Traceback" not in stderr, stderr
    assert {r.id for r in list_runs()} == before
