"""Resume: a run stopped or cut short goes on from its last trainer checkpoint, in its own folder.
(And the Compare tab's estimate, Start-sweep lock and settings diff, read from these same runs.)

Two real short runs on the embedded model with the same settings and seed: one crashes right after
logging step 4 (its checkpoint is at step 2, so steps 3-4 were logged past it), one is stopped with
the job's stop after its first steps. The crashed run is resumed with `python -m studio train
--resume`, the stopped one with the Runs tab's Resume button through the app's API. Steps trained
again from a checkpoint must give the numbers the uninterrupted trajectory gave (the adapter, the
optimizer's moments, the learning-rate schedule and the data order restored), and each step must
appear once in metrics.jsonl. Refusals are checked on copies of the run folders (no training).
The two runs differ only in save_steps, which changes no number of the training.
"""

import os
import shutil

import pytest
import yaml
from gradio_client import Client
from transformers import TrainerCallback

from studio.cli import main
from studio.errors import ConfigError, DataError, JobBusy
from studio.runs import Run
from studio.training import TrainingJob
from studio.ui.runs_tab import resume_state

from helpers import quick_config, wait_for

pytestmark = pytest.mark.slow  # real runs, stopped, crashed and resumed
# Warm-up then decay over 4 steps: a schedule that restarted at the checkpoint would log other rates.
SETTINGS = dict(max_steps=4, warmup_steps=2, eval_fraction=0)


class CrashAfterLogging(TrainerCallback):
    """Raises once step `step` is in metrics.jsonl (the recorder logs first): a crash between two checkpoints."""

    def __init__(self, step: int):
        self.step = step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.global_step == self.step and logs and "loss" in logs:
            raise RuntimeError(f"injected crash after logging step {self.step}")


def train_rows(run: Run) -> list[dict]:
    return [m for m in run.metrics() if "loss" in m]


@pytest.fixture(scope="module")
def runs(module_home, style_pairs, tmp_path_factory):
    crashed = TrainingJob(quick_config(style_pairs, **SETTINGS, save_steps=2), preset="crashed",
                          callbacks=[CrashAfterLogging(4)]).start()
    assert crashed.wait(900) == "failed" and "injected crash" in crashed.error
    uninterrupted = {m["step"]: m for m in train_rows(crashed.run)}  # steps 1-4, never resumed
    pristine = tmp_path_factory.mktemp("copies") / "crashed"
    shutil.copytree(crashed.run.path, pristine)  # for the refusals, before anything resumes it

    stopped = TrainingJob(quick_config(style_pairs, **SETTINGS, save_steps=0), preset="stopped").start()
    assert wait_for(lambda: stopped.step >= 1 or not stopped.is_alive(), 900), stopped.error
    stopped.stop()
    assert stopped.wait(900) == "stopped", stopped.error
    return {"crashed": crashed.run, "stopped": stopped.run, "uninterrupted": uninterrupted, "pristine": pristine}


def test_a_crashed_run_resumes_from_the_cli_and_logs_each_step_once(runs, capsys):
    run, before = runs["crashed"], runs["uninterrupted"]
    assert sorted(before) == [1, 2, 3, 4] and run.state == "failed"
    assert run.checkpoint()[1] == 2  # only the newest checkpoint is kept
    assert [p.name for p in run.checkpoint_dir.iterdir() if p.name.startswith("checkpoint-")] == ["checkpoint-2"]
    first_started = run.status()["started"]

    assert main(["train", "--resume", run.id, "--quiet"]) == 0, capsys.readouterr().err
    status = run.status()
    assert status["state"] == "done" and status["step"] == status["total_steps"] == 4
    rows = train_rows(run)
    assert [m["step"] for m in rows] == [1, 2, 3, 4]  # steps 3-4 logged past the checkpoint were dropped, redone once
    after = {m["step"]: m for m in rows}
    assert after[1] == before[1] and after[2] == before[2]  # kept as logged
    for step in (3, 4):  # trained again from the step-2 checkpoint: the very numbers of the uninterrupted run
        for key in ("loss", "learning_rate", "grad_norm", "rewards/margins"):
            assert after[step][key] == pytest.approx(before[step][key], rel=1e-4, abs=1e-6), (step, key)
    # The schedule went on (peak at step 3, then decay); a restarted warm-up would have logged 0 at step 3.
    assert after[3]["learning_rate"] > 0 and after[4]["learning_rate"] < after[3]["learning_rate"]

    assert status["resumed_from"] == 2 and status["first_started"] == first_started and status["earlier_seconds"] > 0
    assert [r["from_step"] for r in run.info["resumed"]] == [2] and run.info["resumed"][0]["checkpoint"] == "checkpoint-2"
    assert run.has_adapter and not run.checkpoint_dir.exists()  # done: nothing left to resume, its checkpoint goes
    assert "(resumed from step 2)" in capsys.readouterr().err


def test_a_stopped_run_resumes_from_the_runs_tab_and_continues_the_uninterrupted_curve(runs, launched_app):
    run, before = runs["stopped"], runs["uninterrupted"]
    stop_step = run.status()["step"]
    assert run.state == "stopped" and 1 <= stop_step <= 3
    assert run.checkpoint()[1] == stop_step  # a checkpoint where it stopped: no step is repeated
    url, _ = launched_app
    client = Client(url, verbose=False)

    # (Buttons are not in the API's outputs: the line beside Resume says what its state is.)
    note = client.predict(run.id, api_name="/resume_state")
    assert f"goes on from its checkpoint at step {stop_step}" in note and resume_state(run.id)[0].interactive
    table, *_ = client.predict(run.id, [run.id], api_name="/resume_run")
    job = TrainingJob.active()
    assert job is not None and job.run.path == run.path  # the same folder, on the one job slot
    *_, busy = client.predict(api_name="/poll_sweep")  # the Compare tab meanwhile: Start sweep waits
    assert "Start sweep waits" in busy and run.id in busy
    assert job.wait(900) == "done", job.error
    *_, busy = client.predict(api_name="/poll_sweep")
    assert busy == ""
    assert next(r for r in table["data"] if r[0] == run.id)[table["headers"].index("state")] in (
        "queued", "loading", "training")

    rows = train_rows(run)
    assert [m["step"] for m in rows] == [1, 2, 3, 4]
    for step in range(stop_step + 1, 5):  # after the resume: the optimizer state and schedule went on
        for key in ("loss", "learning_rate", "grad_norm"):
            assert rows[step - 1][key] == pytest.approx(before[step][key], rel=1e-4, abs=1e-6), (step, key)
    assert [r["from_step"] for r in run.info["resumed"]] == [stop_step]

    note = client.predict(run.id, api_name="/resume_state")  # now done: nothing to resume
    assert note.startswith("Resume: ") and "is done" in note and not resume_state(run.id)[0].interactive
    client.predict(run.id, [run.id], api_name="/resume_run")  # refused with a warning: nothing starts
    assert TrainingJob.active() is None and run.state == "done"


def copy_of(runs, tmp_path, name: str) -> Run:
    path = tmp_path / name
    shutil.copytree(runs["pristine"], path)
    return Run(path)


def test_resume_refuses_a_finished_running_checkpointless_or_dataless_run(runs, tmp_path, capsys):
    done = copy_of(runs, tmp_path, "done")
    done.write_status(state="done", step=4, total_steps=4)
    with pytest.raises(ConfigError, match="is done"):
        TrainingJob.resume(done)

    running = copy_of(runs, tmp_path, "running")
    # Running in another live process (this test's parent): a live status written by this process for a run
    # no job of it runs is a run that ended without its last write, which reads as failed (issue 21).
    running.write_status(state="training", pid=os.getppid())
    with pytest.raises(JobBusy, match="still training"):
        TrainingJob.resume(running)

    bare = copy_of(runs, tmp_path, "bare")
    shutil.rmtree(bare.checkpoint_dir)
    with pytest.raises(ConfigError, match="no trainer checkpoint"):
        TrainingJob.resume(bare)

    diverged = copy_of(runs, tmp_path, "diverged")
    diverged.write_status(failure="NonFiniteTraining")
    with pytest.raises(ConfigError, match="diverged"):
        TrainingJob.resume(diverged)

    gone = copy_of(runs, tmp_path, "gone")
    data = tmp_path / "moved.jsonl"
    shutil.copy(gone.config().data, data)
    raw = gone.read_config_raw()
    (gone.path / "config.yaml").write_text(yaml.safe_dump({**raw, "data": str(data)}, sort_keys=False))
    TrainingJob.resume(gone)  # the data is there: accepted (not started)
    data.write_text("\n".join(data.read_text().splitlines()[:6]) + "\n")
    with pytest.raises(DataError, match="file changed"):
        TrainingJob.resume(gone)
    data.unlink()
    with pytest.raises(DataError, match="which is gone"):
        TrainingJob.resume(gone)

    # The CLI: the same refusals as `error: …` and exit 2; flags that would change the run are refused.
    assert main(["train", "--resume", str(done.path)]) == 2
    assert "is done" in capsys.readouterr().err
    assert main(["train", "--resume", str(bare.path), "--set", "beta=0.2"]) == 2
    assert "drop --set" in capsys.readouterr().err
    assert TrainingJob.active() is None


# --- the Compare tab, read from these runs ---------------------------------------------------------------


def test_compare_estimates_a_sweep_from_a_step_measured_on_this_machine(runs, launched_app, style_pairs):
    from studio.estimate import step_seconds
    from studio.runs import get_run

    client = Client(launched_app[0], verbose=False)
    form = dict(data=str(style_pairs), max_steps=5, per_device_train_batch_size=2, max_length=64, lora_r=8,
                lora_alpha=16, lora_target_modules=["q_proj", "v_proj"], eval_fraction=0.0)
    text = client.predict(key1="beta", values1=["0.1", "0.5"], key2="(none)", values2=[], **form,
                          api_name="/estimate_sweep")
    assert "2 runs × 5 steps = 10 training steps" in text, text
    measured_on = text.split("measured on run `")[1].split("`")[0]
    assert measured_on in (runs["crashed"].id, runs["stopped"].id)
    assert f"× {step_seconds(get_run(measured_on)):.2f} s a step" in text and "about" in text
    assert "differs" not in text  # that run had these very step-cost settings

    other = client.predict(key1="max_steps", values1=["4", "8"], key2="seed", values2=["0", "1", "2"],
                           **{**form, "model": "HuggingFaceTB/SmolLM2-135M-Instruct"}, api_name="/estimate_sweep")
    assert "6 runs × 4-8 steps = 36 training steps" in other and "Time unknown" in other, other
    empty = client.predict(key1="learning_rate", values1=[], key2="(none)", values2=[], **form,
                           api_name="/estimate_sweep")
    assert "Pick at least one value of Learning rate" in empty  # the setting's label, not learning_rate


def test_compare_shows_the_settings_that_differ_and_an_empty_sweep_table_with_headers(runs, launched_app):
    client = Client(launched_app[0], verbose=False)
    crashed, stopped = runs["crashed"].id, runs["stopped"].id
    client.predict([], api_name="/refresh_compare")  # this page's run choices
    *_, diff = client.predict([crashed, stopped], api_name="/compare_selected")
    assert diff["headers"] == ["setting", crashed, stopped]
    assert diff["data"] == [["Save adapter every N steps", "2", "0"]]  # only what differs, under its label
    *_, single = client.predict([crashed], api_name="/compare_selected")
    assert single["data"] == []

    _, sweep_table, *_ = client.predict(api_name="/load_compare")
    assert sweep_table["headers"] == ["run", "state", "steps", "loss", "train margin", "tuned acc"]
