"""A real DPO run on the embedded model, a few steps long, in a background thread."""

import json
import os
import threading
import time

import pytest
import torch

from helpers import quick_config, wait_for
from studio.config import ConfigError
from studio.runs import MetricsLog, Run, list_runs, mark_interrupted
from studio.training import JobBusy, TrainingJob


@pytest.mark.slow
def test_run_finishes_and_its_folder_is_complete(shared_run):
    assert shared_run.state == "done", shared_run.error
    run = shared_run.run
    assert run.state == "done" and run.status()["step"] == 6
    for name in ("config.yaml", "metrics.jsonl", "status.json", "data.json"):
        assert (run.path / name).is_file(), name
    assert sorted(p.name for p in run.adapter_dir.iterdir() if p.suffix in (".json", ".safetensors")) == [
        "adapter_config.json", "adapter_model.safetensors"]
    assert not (run.adapter_dir / "ref").exists()
    info = run.info
    assert info["backend"] == "transformers+peft" and info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["versions"]["trl"] and info["versions"]["torch"] and info["preset"] == "test"
    data = run.read_json("data.json")
    assert data["pairs"] == 12 and data["train_pairs"] == 9 and data["eval_pairs"] == 3


@pytest.mark.slow
def test_metrics_arrived_step_by_step_while_training_ran(shared_run):
    seen = shared_run.seen_during_training
    assert seen, "no metric was readable while the job was still training"
    assert min(n for n, _ in seen) < 6, "metrics only appeared at the end"
    train = [m for m in shared_run.metrics if "loss" in m]
    assert [m["step"] for m in train] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected", "learning_rate", "grad_norm", "epoch", "time"):
        assert key in train[0], key
    times = [m["time"] for m in train]
    assert times == sorted(times) and times[-1] - times[0] > 0
    evals = [m for m in shared_run.metrics if "eval_loss" in m]
    assert [m["step"] for m in evals] == [3, 6] and "eval_rewards/margins" in evals[0]
    on_disk = [json.loads(line) for line in (shared_run.run.path / "metrics.jsonl").read_text().splitlines()]
    assert on_disk == shared_run.metrics


@pytest.mark.slow
def test_incremental_reads_return_only_new_rows(shared_run):
    log = MetricsLog(shared_run.run.path / "metrics.jsonl")  # a reader following the run from its folder
    rows = log.since(0)
    assert rows == shared_run.metrics
    assert log.since(len(rows) - 2) == rows[-2:] and log.since(len(rows)) == []


@pytest.mark.slow
def test_saved_adapter_reloads_and_changes_log_probabilities(shared_run):
    from studio.evaluate import sequence_logps
    from studio.models import attach_adapter, load_base

    model, tokenizer = load_base("embedded", device="cpu")
    prompt = [{"role": "user", "content": "Tell me one thing about tea."}]
    chosen, rejected = "I like tea. It is simple.", "It is important to note that, in conclusion, tea is a multifaceted topic with numerous considerations."
    base = sequence_logps(model, tokenizer, [prompt, prompt], [chosen, rejected])
    tuned_model = attach_adapter(model, shared_run.run.adapter_dir)
    tuned = sequence_logps(tuned_model, tokenizer, [prompt, prompt], [chosen, rejected])
    with tuned_model.disable_adapter():
        again = sequence_logps(tuned_model, tokenizer, [prompt, prompt], [chosen, rejected])
    assert torch.allclose(base, again, atol=1e-4), "the base weights changed"
    assert not torch.allclose(base, tuned, atol=1e-3), "the adapter did not change log-probabilities"
    # DPO pushed the chosen answer up relative to the rejected one.
    assert (tuned[0] - tuned[1]) > (base[0] - base[1])


@pytest.mark.slow
def test_stop_ends_the_run_early_and_still_saves_the_adapter(studio_home, style_pairs):
    job = TrainingJob(quick_config(style_pairs, max_steps=500, eval_fraction=0)).start()
    assert wait_for(lambda: job.step >= 2), job.error
    job.stop()
    assert job.wait(120) == "stopped"
    assert job.step < 500
    assert Run(job.run.path).state == "stopped"
    assert (job.run.adapter_dir / "adapter_model.safetensors").is_file()
    assert len([m for m in job.metrics.since(0) if "loss" in m]) >= 2


@pytest.mark.slow
def test_a_second_job_is_refused_while_one_runs(studio_home, style_pairs):
    first = TrainingJob(quick_config(style_pairs, max_steps=500, eval_fraction=0)).start()
    try:
        with pytest.raises(JobBusy, match=first.run.id):
            TrainingJob(quick_config(style_pairs)).start()
    finally:
        first.stop()
        first.wait(120)
    assert TrainingJob.active() is None


def test_checks_running_at_once_never_leave_models_on_the_meta_device(studio_home, style_pairs):
    """Start checks the LoRA targets on a model built without weights. Built under accelerate's init_empty_weights
    (a process-wide patch of nn.Module, undone in the wrong order when two checks overlap), two clients pressing
    Start together left every later model of the process on the meta device: the chat, evaluation and training
    of everyone after them failed with "Cannot copy out of meta tensor"."""
    from studio.models import check_targets_in_config, resolve_model

    path, cfg = resolve_model("embedded"), quick_config(style_pairs)
    built_beside, errors, stop = [], [], threading.Event()

    def check():
        try:
            for _ in range(3):
                check_targets_in_config(path, cfg)
        except Exception as e:  # noqa: BLE001 - collected for the assert below
            errors.append(e)

    def build():  # another thread's model, built while the checks run (the chat loading its weights)
        while not stop.wait(0.001):
            built_beside.append(torch.nn.Linear(4, 4).weight.device.type)

    builder = threading.Thread(target=build)
    builder.start()
    checks = [threading.Thread(target=check) for _ in range(6)]
    for t in checks:
        t.start()
    for t in checks:
        t.join()
    stop.set()
    builder.join()
    assert not errors, errors
    assert built_beside and set(built_beside) == {"cpu"}, sorted(set(built_beside))
    assert torch.nn.Linear(4, 4).weight.device.type == "cpu"  # nothing left behind for the next model


def test_qlora_on_cpu_is_refused_before_anything_is_written(studio_home, style_pairs):
    with pytest.raises(ConfigError, match="QLoRA needs a CUDA GPU"):
        TrainingJob(quick_config(style_pairs, method="qlora"))
    assert list_runs() == []


def test_bad_data_fails_the_run_with_a_readable_error(studio_home, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "chosen": "", "rejected": "no"}\n')
    job = TrainingJob(quick_config(bad)).start()
    assert job.wait(120) == "failed"
    status = Run(job.run.path).status()
    assert status["state"] == "failed" and "row 1" in status["error"] and "Traceback" not in status["error"]


def test_unknown_hub_model_fails_offline_naming_the_embedded_default(studio_home, style_pairs):
    job = TrainingJob(quick_config(style_pairs, model="HuggingFaceTB/SmolLM2-135M-Instruct")).start()
    assert job.wait(60) == "failed"
    assert "cannot be reached" in job.error and "embedded" in job.error


def test_runs_left_live_by_a_dead_process_are_marked_interrupted(studio_home):
    run = Run(studio_home / "runs" / "old").create()
    run.write_status(state="training", pid=2**22 + 12345, started=time.time())  # no such pid
    assert mark_interrupted() == ["old"]
    assert run.state == "interrupted"
    alive = Run(studio_home / "runs" / "mine").create()
    alive.write_status(state="training", pid=os.getpid(), started=time.time())
    assert mark_interrupted() == [] and alive.state == "training"
