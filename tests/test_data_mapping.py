"""The Data tab's column mapping, through the app's API: it speaks of dropdowns, pre-selects the columns it can
name, and tells an unknown layout from a recognised one whose rows were all dropped. Plus the one-time model
preparation, which a first check announces before it waits on it."""

import json
import shutil
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from helpers import DATA_OUTPUTS


@pytest.fixture(scope="module")
def client(launched_app):
    url, _ = launched_app
    return Client(url, verbose=False)


def upload(client, path: Path) -> dict:
    return dict(zip(DATA_OUTPUTS, client.predict(handle_file(str(path)), api_name="/check_upload"), strict=True))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_an_unknown_layout_preselects_the_columns_it_can_name_and_speaks_of_dropdowns(client, tmp_path):
    path = write_jsonl(tmp_path / "partly.jsonl", [
        {"prompt": "What is tea?", "chosen": "A drink.", "bad": "It is important to note tea."},
        {"prompt": "What is rain?", "chosen": "Water falling.", "bad": "Rain is multifaceted."}])
    out = upload(client, path)
    assert "Could not tell which columns" in out["summary"] and "dropdowns below" in out["summary"]
    assert "--" not in out["summary"]  # no command-line flags in the browser
    assert {p: out[p]["value"] for p in ("prompt", "chosen", "rejected", "system")} == {
        "prompt": "prompt", "chosen": "chosen", "rejected": "bad", "system": ""}
    assert out["raw"]["headers"] == ["prompt", "chosen", "bad"]

    mapped = dict(zip(DATA_OUTPUTS, client.predict(prompt="prompt", chosen="chosen", rejected="bad", system="",
                                                   api_name="/check_mapping"), strict=True))
    assert "| 2 | 2 | 0 |" in mapped["summary"] and mapped["rejected_col"] == "bad"


def test_a_recognised_layout_with_every_row_dropped_says_so_and_lists_the_rows(client, tmp_path):
    path = write_jsonl(tmp_path / "same.jsonl", [
        {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "Hi!"},
        {"prompt": "Say bye.", "chosen": "", "rejected": "Farewell."}])
    out = upload(client, path)
    summary = out["summary"]
    assert "The layout was recognised, but all 2 rows were dropped" in summary, summary
    assert "prompt/chosen/rejected strings" in summary and "not recognised" not in summary
    dropped = out["dropped"]["data"]
    assert [row[0] for row in dropped] == [1, 2]
    assert "identical" in dropped[0][1] and "chosen is empty" in dropped[1][1]
    assert {p: out[p]["value"] for p in ("prompt", "chosen", "rejected")} == {
        "prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}


def test_engine_messages_name_the_dropdown_instead_of_the_flag(client, tmp_path):
    path = write_jsonl(tmp_path / "twins.jsonl", [{"prompt": "a", "Prompt": "b", "chosen": "c", "rejected": "d"}])
    summary = upload(client, path)["summary"]
    assert "the prompt column dropdown" in summary and "--prompt-col" not in summary, summary


def test_a_check_that_first_prepares_the_embedded_model_says_so_before_it_waits(tmp_path, monkeypatch, style_pairs,
                                                                                model_cache):
    import gradio as gr
    from gradio.utils import get_upload_folder

    from studio.ui.common import Services
    from studio.ui.data_tab import PREPARING, DataTab

    home = tmp_path / "fresh-home"  # no converted model yet: the first check would convert it
    home.mkdir()
    monkeypatch.setenv("STUDIO_HOME", str(home))
    with gr.Blocks():
        tab = DataTab(Services())
        # What connect(train) would give it: the Train tab's data fields a good check fills.
        tab.train_fields = {name: gr.Textbox() for name in ("data", "eval_data", "prompt_col", "chosen_col",
                                                              "rejected_col", "system_col")}
    uploaded = Path(get_upload_folder()) / "test-prepare" / "pairs.jsonl"
    uploaded.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(style_pairs, uploaded)

    steps = tab.check_upload(str(uploaded), "embedded", 64)
    first = next(steps)
    assert first[tab.summary] == PREPARING and "one time" in PREPARING
    steps.close()  # the conversion itself is not run here (~30 s); the cached copy stands in for it below

    (home / "models").symlink_to(model_cache, target_is_directory=True)
    outputs = list(tab.check_upload(str(uploaded), "embedded", 64))
    assert len(outputs) == 1 and "usable pairs" in outputs[0][tab.summary]  # prepared: straight to the report
