"""The web app through its API (gradio_client), against the real engine: data check, a short run, chat.

One app is launched for the module, with its own STUDIO_HOME and the shared model cache. Training is
real (a few steps of the embedded SmolLM2-135M on CPU); nothing is mocked.
"""

import json
import threading
import time
import weakref
import zipfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from helpers import DATA_OUTPUTS
from studio.config import RunConfig, load_preset, preset_names
from studio.runs import Run
from studio.sweep import Sweep
from studio.training import TrainingJob

ROOT = Path(__file__).resolve().parent.parent
TWIN = ROOT / "presets" / "data" / "twin-style.jsonl"
# Small and quick: few tokens per pair, adapter on two projections, no evaluation.
QUICK = dict(max_length=64, lora_r=8, lora_alpha=16, lora_target_modules=["q_proj", "v_proj"], eval_data="",
             eval_fraction=0.0, save_steps=0, learning_rate=1e-3, warmup_steps=0)


@pytest.fixture(scope="module")
def app(launched_app):
    """(client, STUDIO_HOME) for the app launched for this module."""
    url, home = launched_app
    return Client(url, verbose=False), home


def updated(output):
    """The value inside a component update (a handler returned gr.Dataframe(value, column_widths=…))."""
    if isinstance(output, dict) and output.get("__type__") == "update":
        return output.get("value")
    return output


def plotted(figure) -> dict[str, int]:
    """Points per trace name of a gr.Plot value as the client receives it (plotly JSON)."""
    if not figure or not figure.get("plot"):
        return {}
    return {trace.get("name", ""): len(trace.get("x") or []) for trace in json.loads(figure["plot"])["data"]}


def check(client, api_name: str, *args, **kwargs) -> dict:
    return dict(zip(DATA_OUTPUTS, client.predict(*args, api_name=api_name, **kwargs), strict=True))


SHOWN: "weakref.WeakKeyDictionary[Client, str]" = weakref.WeakKeyDictionary()


def poll(client):
    """The timer's handler: (the status html this client's page shows, {chart: figure}). The handler sends only what
    changed, so a tick that finds the same status sends none (a skip) and the page keeps the last one sent."""
    status, loss, margins, accuracy, rewards, logps, *_ = client.predict(api_name="/poll")
    if isinstance(status, str):
        SHOWN[client] = status
    return SHOWN.get(client, status), {"loss": loss, "margins": margins, "accuracy": accuracy, "rewards": rewards,
                                       "logps": logps}


def test_upload_reports_layout_counts_and_token_lengths_and_becomes_the_training_data(app):
    client, home = app
    out = check(client, "/check_upload", handle_file(str(TWIN)))
    summary = out["summary"]
    assert "prompt/chosen/rejected strings" in summary and "jsonl" in summary
    assert "| 170 | 170 | 0 |" in summary  # rows read, usable pairs, dropped
    assert "prompt + longer answer" in summary  # token statistics from the embedded tokenizer
    assert sum(plotted(out["histogram"]).values()) == 4 * 170  # prompt, chosen, rejected, pair: one count per pair
    data = Path(out["data"])
    assert data.parent == home / "uploads" and data.read_bytes() == TWIN.read_bytes()
    assert out["eval_data"] == "" and {out[f"{p}_col"] for p in ("prompt", "chosen", "rejected", "system")} == {""}


def test_dropped_rows_are_listed_with_row_numbers_and_reasons(app, tmp_path):
    client, _ = app
    rows = [{"prompt": "Say hi.", "chosen": "Hi!", "rejected": "Greetings, esteemed user."},
            {"prompt": "Say bye.", "chosen": "", "rejected": "Farewell."},
            {"prompt": "Same?", "chosen": "Yes.", "rejected": "Yes."}]
    path = tmp_path / "three.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = check(client, "/check_upload", handle_file(str(path)))
    assert "| 3 | 1 | 2 |" in out["summary"]
    dropped = out["dropped"]["data"]
    assert [row[0] for row in dropped] == [2, 3]
    assert "chosen is empty" in dropped[0][1] and "identical" in dropped[1][1]
    assert "Greetings, esteemed user." in out["preview"] and "rejected" in out["preview"]
    assert plotted(out["histogram"]).get("prompt") == 1


def test_an_unknown_layout_shows_the_engine_message_and_offers_the_columns_to_map(app, tmp_path):
    client, home = app
    path = tmp_path / "odd.csv"
    path.write_text("question_text,good_answer,bad_answer\nWhat is tea?,A drink.,It is important to note tea.\n"
                    "What is rain?,Water falling.,Rain is a multifaceted phenomenon.\n")
    out = check(client, "/check_upload", handle_file(str(path)))
    assert "Could not tell which columns" in out["summary"] and "question_text" in out["summary"]
    assert {"question_text", "good_answer", "bad_answer"} <= {c[1] for c in out["chosen"]["choices"]}
    assert out["raw"]["headers"] == ["question_text", "good_answer", "bad_answer"]
    assert not str(out["data"]).endswith(".csv")  # a failed check leaves the Train tab's data alone

    out = check(client, "/check_mapping", prompt="question_text", chosen="good_answer", rejected="bad_answer",
                system="")
    assert "mapped columns" in out["summary"] and "| 2 | 2 | 0 |" in out["summary"]
    assert (out["prompt_col"], out["chosen_col"], out["rejected_col"]) == ("question_text", "good_answer", "bad_answer")
    assert out["data"].endswith(".csv") and Path(out["data"]).parent == home / "uploads"  # stored under a generated name


def test_a_preset_fills_every_field(app):
    client, _ = app
    values = client.predict("llm-twin-dpo", api_name="/load_preset")
    *fields, card, note = values
    assert "mlabonne/TwinLlama-3.1-8B" in fields and "mlabonne/llmtwin-dpo" in fields and 2e-06 in fields
    assert "Handbook" in card and "Write a paragraph to introduce supervised fine-tuning." in card
    assert "estimate" in note and "QLoRA" in note


def test_bad_settings_and_qlora_on_cpu_are_messages_not_tracebacks(app, style_pairs):
    client, _ = app
    status = client.predict(data=str(style_pairs), max_steps=0, api_name="/start")[0]
    assert "max_steps must be -1 (use num_train_epochs) or &gt; 0, got 0" in status and "Traceback" not in status
    # The engine's bound, naming the field by its label and key (the browser's own "Value 0 is less than
    # minimum value" named neither, issue 13).
    status = client.predict(data=str(style_pairs), beta=0, api_name="/start")[0]
    assert "beta must be &gt; 0, got 0" in status and "Traceback" not in status
    status = client.predict(data=str(style_pairs), method="qlora", api_name="/start")[0]
    assert "QLoRA needs a CUDA GPU" in status
    status = client.predict(data="/nowhere/pairs.jsonl", api_name="/start")[0]
    assert "/nowhere/pairs.jsonl" in status and "STUDIO_DATA_DIRS" in status  # no server path outside the allowed folders
    missing = style_pairs.parent / "missing.jsonl"
    status = client.predict(data=str(missing), api_name="/start")[0]
    assert "file not found" in status
    assert TrainingJob.active() is None


@pytest.mark.slow
def test_a_run_streams_its_metrics_stops_and_then_both_chat_panes_answer(app, style_pairs):
    client, home = app
    started = time.time()
    status = client.predict(data=str(style_pairs), max_steps=200, **QUICK, api_name="/start")[0]
    assert "Traceback" not in status and TrainingJob.active() is not None
    job = TrainingJob.active()

    # Metrics reach the charts while the job still trains.
    deadline, latencies, figures = time.time() + 600, [], {}
    while time.time() < deadline:
        t0 = time.time()
        status, figures = poll(client)
        latencies.append(time.time() - t0)
        if plotted(figures["loss"]).get("train", 0) >= 2:
            break
        assert "failed" not in status, status
        time.sleep(0.5)
    assert job.state == "training" and job.is_alive(), status
    assert plotted(figures["loss"])["train"] >= 2 and plotted(figures["margins"])["train"] >= 2
    assert {"per step", "10-step mean"} <= set(plotted(figures["accuracy"]))
    assert {"chosen", "rejected"} <= set(plotted(figures["rewards"])) and "chosen" in plotted(figures["logps"])
    assert f"run <code>{job.run.id}</code>" in status and "training" in status and "/200" in status
    print(f"\npoll while training: max {max(latencies):.2f}s over {len(latencies)} calls; "
          f"first points after {time.time() - started:.0f}s")
    assert max(latencies) < 5  # light: the timer never waits on training

    # A second browser (a new session) finds the live run with its whole history.
    status2, figures2 = poll(Client(client.src, verbose=False))
    assert job.run.id in status2 and plotted(figures2["loss"])["train"] >= plotted(figures["loss"])["train"]

    # Stop ends the run at the next step, with its adapter saved.
    assert "Stopping" in client.predict(api_name="/stop")
    assert job.wait(300) == "stopped"
    status, _ = poll(client)
    assert "stopped" in status and (job.run.adapter_dir / "adapter_model.safetensors").is_file()

    # The finished run is offered in Chat; both panes answer, and the conversation goes on.
    runs = client.predict(None, api_name="/chat_runs")
    assert runs["value"] == job.run.id
    t0 = time.time()
    baseline, tuned, chat_status = client.predict("Tell me one thing about tea.", job.run.id, 24, 0, 0.9,
                                                  api_name="/chat")
    print(f"first chat (model load + 24 tokens): {time.time() - t0:.1f}s")
    assert [m["role"] for m in baseline] == [m["role"] for m in tuned] == ["user", "assistant"]
    texts = [_text(baseline[-1]), _text(tuned[-1])]
    assert all(t.strip() and t != "…" for t in texts), texts
    assert "Answered" in chat_status
    # The conversation goes on from the session's own history (the server holds it, so a queued message sees it).
    baseline2, tuned2, _ = client.predict("And one more?", job.run.id, 16, 0, 0.9, api_name="/chat")
    assert len(baseline2) == len(tuned2) == 4 and _text(baseline2[1]) == texts[0] and _text(tuned2[1]) == texts[1]
    assert _text(baseline2[-1]).strip() and _text(tuned2[-1]).strip()

    # Runs: listed with its state and metrics; the adapter downloads as a zip.
    table = client.predict(None, None, api_name="/runs")[0]
    row = next(r for r in table["data"] if r[0] == job.run.id)
    assert row[table["headers"].index("state")] == "stopped" and row[table["headers"].index("loss")] is not None
    download = client.predict(job.run.id, api_name="/download_adapter")
    with zipfile.ZipFile(download["value"]) as archive:
        names = archive.namelist()
    assert f"{job.run.id}/adapter/adapter_model.safetensors" in names and f"{job.run.id}/config.yaml" in names


def _text(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(block.get("text", "") for block in content)


@pytest.mark.slow
def test_a_two_run_sweep_from_the_compare_tab_opens_its_comparison(app, style_pairs):
    client, home = app
    before = {p.name for p in (home / "runs").iterdir()} if (home / "runs").is_dir() else set()
    settings = {**QUICK, "eval_fraction": 0.25, "max_steps": 2}
    probes = "Tell me one thing about tea.\nTell me one thing about rain."
    # A bad grid is a message naming the setting, and nothing starts.
    status = client.predict(data=str(style_pairs), key1="beta", values1=["0.1", "zero"], api_name="/start_sweep")[0]
    assert "beta" in status and "zero" in status and "not started" in status
    assert Sweep.active() is None

    status = client.predict(data=str(style_pairs), **settings, key1="beta", values1=["0.1", "0.5"], key2="(none)",
                            values2=[], prompts=probes, max_new_tokens=8, api_name="/start_sweep")[0]
    assert "Traceback" not in status and Sweep.active() is not None, status
    sweep = Sweep.active()
    seen, opened, deadline = set(), None, time.time() + 900
    while time.time() < deadline:
        out = dict(zip(("status", "table", "runs", "results", "margins", "loss", "grid", "files"),
                       client.predict(api_name="/poll_sweep")))
        seen |= {s for s in ("training", "evaluating", "done") if f">{s}<" in (out["status"] or "")}
        grid = updated(out["grid"])
        if not sweep.is_alive() and grid and grid.get("headers", [None])[0] == "prompt" and len(grid["headers"]) == 4:
            opened = {**out, "grid": grid}
            break
        time.sleep(1.0)
    assert sweep.state == "done", sweep.error
    assert opened is not None, "the finished sweep did not open its comparison"
    assert "training" in seen and "done" in seen

    # Two ordinary new runs, each with a value of the grid and every other setting from the form.
    new_runs = [r.id for r in sweep.runs]
    assert {p.name for p in (home / "runs").iterdir()} - before == set(new_runs) and len(new_runs) == 2
    assert [r.config().beta for r in sweep.runs] == [0.1, 0.5]
    assert all(r.config().max_steps == 2 and r.config().lora_r == 8 for r in sweep.runs)

    # The comparison: both runs picked, their accuracy row, overlaid curves, the grid and its files.
    assert opened["runs"]["value"] == new_runs
    results = opened["results"]
    assert [row[0] for row in results["data"]] == new_runs
    for header in ("beta", "baseline acc", "tuned acc", "reward acc", "drift"):
        column = results["headers"].index(header)
        assert all(row[column] is not None for row in results["data"]), header
    assert {n for n in plotted(opened["margins"]) if not n.endswith("(eval)")} >= set(new_runs)
    grid = opened["grid"]
    assert grid["headers"] == ["prompt", "SFT baseline", *new_runs]
    assert [row[0] for row in grid["data"][:2]] == probes.splitlines()
    assert all(cell.strip() for row in grid["data"][:2] for cell in row)
    assert grid["data"][2][0] == "[mean words]"
    csv_file, md_file = sorted(opened["files"], key=lambda f: f.endswith(".md"))
    assert Path(csv_file).read_text().startswith("prompt,SFT baseline,") and "| prompt |" in Path(md_file).read_text()
    assert (home / "sweeps" / sweep.id / "grid.md").is_file()

    # The same grid again from the button: fixed settings and seed give the same answers.
    again, files = client.predict(new_runs, probes, 8, api_name="/probe_grid")
    again = updated(again)
    assert again["headers"] == grid["headers"] and again["data"] == grid["data"]
    assert len(files) == 2

    # Evaluating again from the button, with the same probes, gives the same numbers.
    table = client.predict(new_runs, probes, 8, api_name="/evaluate_runs")
    assert table["data"] == results["data"]

    # A new page (another browser, a reload) opens on the same comparison, read from disk.
    status, _, runs, results2, _, _, prompts2, tokens2, grid2, files2, *_ = Client(client.src, verbose=False).predict(
        api_name="/load_compare")
    assert sweep.id in status and ">done<" in status
    assert runs["value"] == new_runs and results2["data"] == results["data"]
    assert prompts2 == probes and tokens2 == 8 and updated(grid2)["data"] == grid["data"] and len(files2) == 2


@pytest.mark.slow
def test_two_clients_pressing_start_at_the_same_instant_make_exactly_one_run(app, style_pairs):
    client, home = app
    before = set((home / "runs").iterdir()) if (home / "runs").is_dir() else set()
    barrier = threading.Barrier(2)
    statuses = []

    def press_start():
        own = Client(client.src, verbose=False)  # a second browser: its own session
        barrier.wait()
        statuses.append(own.predict(data=str(style_pairs), max_steps=200, **QUICK, api_name="/start")[0])

    threads = [threading.Thread(target=press_start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    job = TrainingJob.active()
    try:
        new = set((home / "runs").iterdir()) - before
        assert len(new) == 1, new
        refused = [s for s in statuses if "not started" in s]
        assert len(refused) == 1 and "already running" in refused[0], statuses
        assert "Traceback" not in "".join(statuses)
    finally:
        if job is not None:
            job.stop()
            job.wait(300)


def test_deleting_a_run_removes_its_folder(app, style_pairs):
    client, home = app
    # A finished run folder of its own (settings, state, adapter), so the test needs no training before it.
    run = Run(home / "runs" / "to-delete").create()
    run.write_config(RunConfig(data=str(style_pairs)))
    run.write_status(state="done", step=2)
    run.adapter_dir.mkdir()
    (run.adapter_dir / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    assert run.id in [r[0] for r in client.predict(None, None, api_name="/runs")[0]["data"]]
    table, *_ = client.predict(run.id, None, api_name="/delete_run")
    assert not run.path.exists()
    assert run.id not in [r[0] for r in table["data"]]


# --- the pieces behind the form, without a server --------------------------------------------------


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_survives_the_round_trip_through_the_form(name):
    from studio.ui.train_tab import config_from_widgets, widget_value

    cfg = load_preset(name).config
    shown = {key: widget_value(key, value) for key, value in cfg.to_dict().items()}
    assert config_from_widgets(shown) == cfg


def test_memory_estimate_reads_the_embedded_model_shape_and_qlora_needs_less(studio_home):
    from studio.memory import describe, estimate

    est = estimate("embedded", max_length=256)
    assert est.params == 134_515_008  # SmolLM2-135M, counted from its shape (tied embeddings)
    assert 0.5 < est.lora_gb < 4 and est.qlora_gb < est.lora_gb
    note = describe("embedded", "lora", "QLoRA needs a CUDA GPU", max_length=256)
    assert "estimate" in note and "LoRA ≈ **" in note and "unavailable here: QLoRA needs a CUDA GPU" in note
    assert estimate("someone/Model-7B").params == 7e9  # offline, no config.json: from the name


def test_accuracy_smoothing_is_a_rolling_mean_of_the_jumps():
    from studio.ui.charts import accuracy_figure, rolling_mean

    assert rolling_mean([0, 1, 0.5, 1], window=2) == [0, 0.5, 0.75, 0.75]
    rows = [{"step": i, "loss": 0.69, "rewards/accuracies": a} for i, a in enumerate([0, 0.5, 1, 1], 1)]
    traces = {t.name: list(t.y) for t in accuracy_figure(rows).data}
    assert traces["per step"] == [0, 0.5, 1, 1] and traces["10-step mean"] == [0, 0.25, 0.5, 0.625]
