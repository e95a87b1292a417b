"""Thumbs up / down on a pool's answers, one answer at a time: the feedback KTO trains on.

Beside the blind A/B pairs (studio.label), a person can judge each sampled answer on its own: thumbs up, thumbs
down, or skip. Each decision is appended at once to the pool's `thumbs.jsonl` (an undo is its own event naming
the decision it takes back, as in labels.jsonl), so a reload or a second browser resumes where it stopped.
`to_kto` writes the standing verdicts as an unpaired preference file (pools/<id>/thumbs.kto.jsonl: prompt,
completion, label plus provenance) that `data check` reads and objective kto trains on.

An answer's id is `<candidate id>#<answer index>`; which model wrote it is never shown.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from .errors import DataError
from .pools import Pool, get_pool
from .store import append_jsonl, atomic_write, read_jsonl

VERDICTS = ("up", "down", "skip")
FILE = "thumbs.jsonl"
KTO_FILE = "thumbs.kto.jsonl"


def answers(pool: Pool) -> list[dict]:
    """Every answer of the pool in order: {answer, candidate, index, prompt, text}."""
    out = []
    for c_index, c in enumerate(pool.candidates()):
        for i, a in enumerate(c.get("answers", [])):
            out.append({"answer": f"{c['id']}#{i}", "candidate": c_index, "index": i, "prompt": c["prompt"],
                        "text": a.get("text", "")})
    return out


def _events(pool: Pool) -> list[dict]:
    return read_jsonl(pool.path / FILE)


def verdicts(pool: Pool, labeller: str | None = None) -> dict[tuple[str, str], dict]:
    """(answer, labeller) -> the standing thumbs event (the latest not undone)."""
    live: dict[str, dict] = {}
    for e in _events(pool):
        if labeller is not None and e.get("labeller") != labeller:
            continue
        if e.get("event") == "thumb":
            live[e["id"]] = e
        elif e.get("event") == "undo":
            live.pop(e.get("target"), None)
    out = {}
    for e in sorted(live.values(), key=lambda e: e["time"]):
        out[(e["answer"], e["labeller"])] = e
    return out


def answer_view(pool: Pool, answer_id: str) -> dict:
    for a in answers(pool):
        if a["answer"] == answer_id:
            return {"answer": a["answer"], "prompt": a["prompt"], "text": a["text"]}
    raise DataError(f"Pool {pool.id} has no answer {answer_id!r}.")


def next_answer(pool: Pool | str, labeller: str) -> dict | None:
    """The next answer this labeller has not judged (skipped ones come back after all others); None when done."""
    pool = get_pool(pool)
    mine = verdicts(pool, labeller)
    every = answers(pool)
    fresh = [a for a in every if (a["answer"], labeller) not in mine]
    skipped = [a for a in every if mine.get((a["answer"], labeller), {}).get("verdict") == "skip"]
    for a in fresh or skipped:
        return {"answer": a["answer"], "prompt": a["prompt"], "text": a["text"]}
    return None


def thumb(pool: Pool | str, answer_id: str, verdict: str, labeller: str) -> dict:
    """Record a thumbs up, down or skip on one answer; on disk before it returns."""
    pool = get_pool(pool)
    if verdict not in VERDICTS:
        raise DataError(f"Unknown verdict {verdict!r}; one of {', '.join(VERDICTS)}.")
    answer_view(pool, answer_id)  # an answer id from a browser must name an answer of this pool
    event = {"id": uuid.uuid4().hex[:12], "event": "thumb", "answer": answer_id, "labeller": labeller,
             "verdict": verdict, "time": time.time()}
    append_jsonl(pool.path / FILE, event)
    return event


def undo_thumb(pool: Pool | str, labeller: str) -> str | None:
    """Take back the labeller's latest thumbs decision; returns its answer id (to show again), or None."""
    pool = get_pool(pool)
    mine = [e for e in verdicts(pool, labeller).values()]
    if not mine:
        return None
    latest = max(mine, key=lambda e: e["time"])
    append_jsonl(pool.path / FILE, {"id": uuid.uuid4().hex[:12], "event": "undo", "target": latest["id"],
                                    "labeller": labeller, "time": time.time()})
    return latest["answer"]


def progress(pool: Pool | str, labeller: str) -> dict:
    pool = get_pool(pool)
    mine = verdicts(pool, labeller)
    counts = {v: sum(1 for e in mine.values() if e["verdict"] == v) for v in VERDICTS}
    total = len(answers(pool))
    return {"total": total, **counts, "judged": counts["up"] + counts["down"], "left": total - counts["up"] - counts["down"]}


def thumbs_labellers(pool: Pool | str) -> list[str]:
    return sorted({e["labeller"] for e in _events(get_pool(pool)) if e.get("labeller")})


def kto_rows(pool: Pool, labeller: str | None = None) -> list[dict]:
    """One row per standing thumbs up or down (skips make none): prompt, completion, label and provenance."""
    candidates = pool.candidates()
    round_ = pool.info().get("round")
    rows = []
    for (answer_id, who), e in sorted(verdicts(pool, labeller).items()):
        if e["verdict"] == "skip":
            continue
        cid, _, index = answer_id.partition("#")
        c = next((c for c in candidates if c["id"] == cid), None)
        if c is None or not index.isdigit() or int(index) >= len(c["answers"]):
            continue
        a = c["answers"][int(index)]
        if not a.get("text", "").strip():
            continue
        messages = c["messages"]
        rows.append({"prompt": messages if len(messages) > 1 else c["prompt"], "completion": a["text"],
                     "label": e["verdict"] == "up", "labeller": who, "round": round_,
                     "model": a.get("name") or a.get("model"), "pool": pool.id, "answer": answer_id})
    return rows


def to_kto(pool: Pool | str, labeller: str | None = None, path: str | Path | None = None) -> tuple[Path, dict]:
    """Write the thumbs as KTO's unpaired file (default pools/<id>/thumbs.kto.jsonl); returns (path, {up, down})."""
    pool = get_pool(pool)
    rows = kto_rows(pool, labeller)
    if not rows:
        who = f" by {labeller}" if labeller else ""
        raise DataError(f"Pool {pool.id} has no thumbs up or down{who} yet: judge some answers first "
                        "(skips make no example).")
    path = Path(path) if path else pool.path / KTO_FILE
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    up = sum(1 for r in rows if r["label"])
    return path, {"up": up, "down": len(rows) - up}
