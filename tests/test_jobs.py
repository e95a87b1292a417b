"""One slot for all long work: taken atomically, across threads and processes; a dead holder frees it."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from studio import jobs
from studio.errors import JobBusy
from studio.runs import claim_run_dir

ROOT = Path(__file__).resolve().parent.parent


def blocking_job(title: str, release: threading.Event) -> jobs.Job:
    return jobs.Job("test", title, work=lambda job: release.wait(30))


def test_a_second_job_is_refused_naming_the_first(studio_home):
    release = threading.Event()
    first = blocking_job("first job", release).start()
    try:
        with pytest.raises(JobBusy, match="first job"):
            blocking_job("second job", threading.Event()).start()
        assert jobs.active() is first and jobs.holder()["title"] == "first job"
    finally:
        release.set()
        first.wait(10)
    assert jobs.active() is None and jobs.holder() is None
    blocking_job("third job", release).start().wait(10)  # the slot is free again


def test_simultaneous_starts_give_exactly_one_job(studio_home):
    release, barrier = threading.Event(), threading.Barrier(8)
    started, refused = [], []

    def press_start(i):
        job = blocking_job(f"job {i}", release)
        barrier.wait()
        try:
            started.append(job.start())
        except JobBusy:
            refused.append(i)

    threads = [threading.Thread(target=press_start, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    release.set()
    assert len(started) == 1 and len(refused) == 7
    started[0].wait(10)


HOLD = """
import sys, time, threading
sys.path.insert(0, {root!r})
from studio import jobs
job = jobs.Job("test", "held by a CLI process", work=lambda job: time.sleep(60)).start()
print("held", flush=True)
job.wait()
"""


@pytest.mark.subprocess
def test_another_process_holding_the_slot_is_named_and_a_killed_one_frees_it(studio_home):
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT))], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "STUDIO_HOME": str(studio_home)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(JobBusy, match=rf"another process \(pid {holder.pid}\).*held by a CLI process"):
            jobs.Job("test", "mine", work=lambda job: None).start()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    # The kernel dropped the dead process's lock: no stale lock to clean up by hand.
    assert jobs.holder() is None
    assert jobs.Job("test", "mine", work=lambda job: 42).start().wait(10) == "done"


def test_wait_for_slot_queues_behind_the_running_job(studio_home):
    release = threading.Event()
    first = blocking_job("first", release).start()
    said = []
    threading.Timer(0.5, release.set).start()
    second = jobs.wait_for_slot(jobs.Job("test", "second", work=lambda job: "ok"), say=said.append, poll=0.1)
    assert second.wait(10) == "done" and second.result == "ok" and first.state == "done"
    assert len(said) == 1 and "first" in said[0] and "Waiting" in said[0]


def test_run_ids_claimed_in_the_same_second_never_collide(studio_home):
    paths, barrier = [], threading.Barrier(6)

    def claim():
        barrier.wait()
        paths.append(claim_run_dir(None, "race"))

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 6 and all(p.is_dir() for p in paths)


def test_an_out_folder_with_files_in_it_is_never_written_into(tmp_path):
    from studio.errors import ConfigError

    other = tmp_path / "mine"
    (other / "adapter").mkdir(parents=True)
    (other / "adapter" / "weights.bin").write_text("precious")
    with pytest.raises(ConfigError, match="not empty"):
        claim_run_dir(other)
    assert (other / "adapter" / "weights.bin").read_text() == "precious"
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        claim_run_dir(tmp_path / "a-file")


def test_eta_leaves_out_the_slow_first_unit(studio_home):
    def work(job):
        job.report("working", 0, 20)
        time.sleep(0.6)  # warm-up: much slower than the rest
        job.report("working", 1, 20)
        for i in range(2, 6):
            time.sleep(0.05)
            job.report("working", i, 20)
        return job.eta()

    job = jobs.Job("test", "eta", work=work).start()
    job.wait(10)
    assert job.result is not None and job.result < 15 * 0.2  # about 15 x 0.05 s; the 0.6 s warm-up would give ~2.5 s+


def test_a_failing_job_ends_failed_with_the_message_and_frees_the_slot(studio_home):
    from studio.errors import DataError

    def work(job):
        raise DataError("pairs.jsonl row 3: chosen is empty")

    job = jobs.Job("test", "bad", work=work).start()
    assert job.wait(10) == "failed" and job.error == "pairs.jsonl row 3: chosen is empty"
    with pytest.raises(DataError):
        jobs.run("test", "bad again", work)
    assert jobs.holder() is None


def test_the_lock_file_names_the_job_as_it_is_once_started_not_as_it_was_queued(studio_home):
    """Another process reads the lock file: it must name the real run, not 'training run (not started) (queued)'."""
    class Named(jobs.Job):
        def before_start(self):
            self.title = "training run 20261204-101500-test"  # what TrainingJob does once it has claimed its folder

    release = threading.Event()
    job = Named("train", "training run (not started)", work=lambda job: release.wait(30)).start()
    try:
        info = json.loads(jobs.lock_path().read_text())
        assert info["title"] == "training run 20261204-101500-test"
        message = jobs._busy_message({**info, "pid": info["pid"] + 1})  # as another process words it
        assert "training run 20261204-101500-test" in message
        assert "not started" not in message and "queued" not in message
    finally:
        release.set()
        job.wait(10)
