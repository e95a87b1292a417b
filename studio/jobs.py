"""The one slot for long work: training, sweeps, evaluation, generation, labelling by a judge, export.

One job runs at a time per STUDIO_HOME, because two would fight over the same cores or GPU memory.
The slot is taken atomically before anything starts: a thread lock inside the process and an
exclusive `flock` on STUDIO_HOME/job.lock across processes (the CLI and the app exclude each other).
The kernel drops a flock when its process dies, so a lock left by a killed process is never stale.

    job = Job("export", "merged weights of run X", work=lambda job: export_run(..., progress=job.report,
                                                                              should_stop=job.stopping))
    job.start()          # raises JobBusy (naming what runs) when the slot is taken
    job.progress()       # state, phase, done/total, elapsed, ETA: what every browser and the CLI show
    job.stop(); job.wait()

Kinds with their own lifecycle (TrainingJob, Sweep) subclass Job and override `work()`; everything
else passes an engine function. `wait_for_slot()` queues a caller (the CLI) behind another process.
"""

from __future__ import annotations

import fcntl
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

from . import distributed, zerogpu
from .config import studio_home
from .errors import JobBusy, user_message

FINAL = ("done", "stopped", "failed")
_lock = threading.Lock()
_active: "Job | None" = None  # the job holding the slot in this process
_fd: int | None = None  # the open job.lock while this process holds the slot


def lock_path() -> Path:
    return studio_home() / "job.lock"


def active() -> "Job | None":
    """The job running in this process, if any."""
    job = _active
    return job if job is not None and job.is_alive() else None


def holder() -> dict | None:
    """What holds the slot, in this process or another one; None when it is free."""
    job = active()
    if job is not None:
        return job.describe()
    path = lock_path()
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            return json.loads(path.read_text(encoding="utf-8") or "{}") or {"title": "another process"}
        except (OSError, json.JSONDecodeError):
            return {"title": "another process"}
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _busy_message(info: dict) -> str:
    if info.get("pid") == os.getpid():
        return f"A job is already running: {info.get('title')} ({info.get('state', 'running')}). Stop it first."
    # Another process's lock file is a snapshot taken when it claimed the slot: its state there would be stale.
    return f"A job is already running in another process (pid {info.get('pid')}): {info.get('title')}. Stop it first."


def _describe_holder(job: "Job") -> None:
    """Rewrite the lock file with the job's description once `before_start` has named it (a run id, not '(not started)')."""
    with _lock:
        if _active is job and _fd is not None:
            os.ftruncate(_fd, 0)
            os.pwrite(_fd, json.dumps(job.describe()).encode(), 0)


def _acquire(job: "Job") -> None:
    global _active, _fd
    with _lock:
        if _active is not None and _active is not job and _active._claimed:
            raise JobBusy(_busy_message(_active.describe()))
        if not distributed.is_main():  # one of several processes of a run: the main one holds the slot for all
            _active, _fd = job, None
            job._claimed = True
            return
        path = lock_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JobBusy(_busy_message(holder() or {"title": "another process"})) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(job.describe()).encode())
        _active, _fd = job, fd
        job._claimed = True


def _release(job: "Job") -> None:
    global _active, _fd
    with _lock:
        if _active is not job:
            return
        if _fd is not None:
            try:
                os.ftruncate(_fd, 0)
            finally:
                fcntl.flock(_fd, fcntl.LOCK_UN)
                os.close(_fd)
        _active, _fd = None, None
        job._claimed = False


def wait_for_slot(job: "Job", say: Callable[[str], None] = print, poll: float = 2.0) -> "Job":
    """Start `job` as soon as the slot is free, saying once what it waits for (Ctrl-C gives up)."""
    said = False
    while True:
        try:
            return job.start()
        except JobBusy as e:
            if not said:
                say(f"{e} Waiting for it to finish (Ctrl-C to give up)…".replace(" Stop it first.", ""))
                said = True
            time.sleep(poll)


def run(kind: str, title: str, work: Callable[["Job"], object]):
    """Run `work(job)` on the slot and wait for it: its result, or its exception raised here (JobBusy if taken).

    For work a caller waits on anyway (an evaluation a page asked for): it still holds the slot, so
    it never runs beside a training, and every page sees it as the running job.
    """
    job = Job(kind, title, work).start()
    job.wait()
    if job.exception is not None:
        raise job.exception
    return job.result


class Job:
    """One piece of long work with a state, a named phase, progress, an ETA and a stop flag."""

    kind = "job"

    def __init__(self, kind: str | None = None, title: str = "", work: Callable[["Job"], object] | None = None):
        self.kind = kind or self.kind
        self.title = title or self.kind
        self._work = work
        self.state = "queued"
        self.phase = "waiting"
        self.done = 0
        self.total: int | None = None
        self.error: str | None = None
        self.result = None
        self.exception: BaseException | None = None
        self.started_at: float | None = None
        self._unit_times: list[float] = []  # when each unit of the current phase finished
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._claimed = False
        self._inline = False

    # --- control ---
    def start(self) -> "Job":
        """Take the slot (JobBusy when taken), run `before_start()` in the caller, then work in a thread."""
        zerogpu.check_job(self.kind, self.title)  # on ZeroGPU only chat-sized GPU work runs: refuse before anything is written
        _acquire(self)
        try:
            self.started_at = time.time()
            self.before_start()
            _describe_holder(self)
        except BaseException:
            _release(self)
            raise
        self._thread = threading.Thread(target=self._main, name=f"{self.kind}-job", daemon=True)
        self._thread.start()
        return self

    def run_here(self, on_start: Callable[["Job"], None] | None = None) -> "Job":
        """Run in the caller's thread without taking the slot: for work a job on the slot (a sweep) runs itself.

        `on_start(job)` runs once `before_start()` has (the job's folder exists) and before the work: where
        the caller publishes the job (a sweep's current run), which `is_alive()` already reports as running.
        """
        self._inline = True
        self.started_at = time.time()
        self.before_start()
        if on_start is not None:
            on_start(self)
        self._run()
        return self

    def stop(self) -> None:
        self._stop.set()

    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait(self, timeout: float | None = None) -> str:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state

    def is_alive(self) -> bool:
        if self._inline:
            return self.started_at is not None and self.state not in FINAL
        return self._thread is not None and self._thread.is_alive()

    # --- what subclasses or engine functions call ---
    def before_start(self) -> None:
        """Runs in the caller's thread once the slot is held (create folders, write the first status)."""

    def work(self):
        return self._work(self) if self._work is not None else None

    def report(self, phase: str, done: int = 0, total: int | None = None) -> None:
        """Progress from the engine: a named phase and units done of total (None: unknown)."""
        now = time.time()
        if phase != self.phase or done < self.done:
            self._unit_times = [now]  # a new phase: its rate starts afresh
        elif done > self.done:
            self._unit_times.append(now)
        self.phase, self.done, self.total = phase, done, total

    def eta(self) -> float | None:
        """Seconds left in this phase, from the median of recent unit times; the first unit (warm-up) is left out."""
        times = self._unit_times[1:]
        if self.total is None or len(times) < 2:
            return None
        recent = [b - a for a, b in zip(times[-11:], times[-10:])]
        return statistics.median(recent) * max(self.total - self.done, 0)

    # --- the thread ---
    def _main(self) -> None:
        try:
            self._run()
        finally:
            _release(self)

    def _run(self) -> None:
        """The lifecycle around `work()`; kinds with states of their own (a run's) override it."""
        try:
            self.state = "running"
            self.result = self.work()
            self.state = "stopped" if self._stop.is_set() else "done"
        except BaseException as e:  # noqa: BLE001 - a job must end in a state, whatever went wrong
            self.exception = e
            self.error = user_message(e) or f"{type(e).__name__}: {e}"
            self.state = "failed"
        finally:
            self.phase = self.state

    # --- what every browser and the CLI show ---
    def describe(self) -> dict:
        return {"kind": self.kind, "title": self.title, "state": self.state, "pid": os.getpid()}

    def progress(self) -> dict:
        elapsed = time.time() - self.started_at if self.started_at else 0.0
        return {"kind": self.kind, "title": self.title, "state": self.state, "phase": self.phase, "done": self.done,
                "total": self.total, "elapsed": elapsed, "eta": self.eta(), "error": self.error}
