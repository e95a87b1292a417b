"""Suspect labels: the pairs a model prefers the *rejected* answer of most strongly, ranked for a person to review.

The score of a pair is a per-token margin, so long and short answers compare fairly:

- a run (its adapter on its base): the DPO implicit reward margin per token,
  (log pi_run(chosen) - log pi_base(chosen)) / |chosen| - (the same for rejected). A run trained on this
  very file has learned what most pairs agree on, so the pairs it scores most negative are the ones that go
  against the rest of the data: swapped labels first.
- a plain model (embedded, a hub id, a model folder): mean log-probability of chosen minus rejected, the
  model's own taste, which is weaker evidence.

Scoring is batched, pairs of similar length together (less padding), with the answers cut at max_length
as the trainer cuts them.
"""

from __future__ import annotations

import math

from .data.findings import finding
from .errors import DataError
from .runs import get_run

TOP_SHARE = 0.1  # suspects reported: this share of the pairs (at least TOP_MIN, at most TOP_MAX), if negative
TOP_MIN, TOP_MAX = 5, 50


def suspect_count(n: int) -> int:
    return min(TOP_MAX, max(TOP_MIN, math.ceil(n * TOP_SHARE)), n)


def resolve(spec: str, folders: bool = False):
    """(base model spec, run or None) for `embedded`, a hub id, a model folder, or a run id (a run folder with
    `folders=True`, for the CLI)."""
    spec = (spec or "embedded").strip()
    try:
        run = get_run(spec, folders=folders)
    except FileNotFoundError:  # NotFound: no run of that name, so a model spec (a hub id has a slash)
        run = None
    if run is not None:
        if not run.has_adapter:
            raise DataError(f"Run {run.id} has no saved adapter yet (state: {run.state}); it cannot score pairs.")
        return run.config().model, run
    return spec, None


def margins(engine, pairs: list[dict], adapter: str | None = None, max_length: int | None = None,
            batch_size: int = 16, progress=None) -> list[float]:
    """Per-token margin of chosen over rejected for each pair (see the module doc); `adapter`: a run's adapter
    name in `engine` (None: the engine's model as it is)."""
    # deferred: evaluate imports torch; `data check` imports this module and must answer fast without --suspects
    from .evaluate import BASE, answer_logps

    if not pairs:
        return []
    # Similar lengths in one batch: the padding of a batch is its longest row.
    order = sorted(range(len(pairs)), key=lambda i: sum(len(m["content"]) for m in pairs[i]["prompt"])
                   + max(len(pairs[i]["chosen"][-1]["content"]), len(pairs[i]["rejected"][-1]["content"])))
    scores = [0.0] * len(pairs)
    step = max(1, batch_size)
    for start in range(0, len(order), step):
        chunk = [pairs[i] for i in order[start:start + step]]
        prompts = [p["prompt"] for p in chunk] * 2
        answers = [p["chosen"][-1]["content"] for p in chunk] + [p["rejected"][-1]["content"] for p in chunk]
        with engine._lock:
            if adapter:
                tuned, counts = answer_logps(engine.model, engine.tokenizer, prompts, answers, len(answers),
                                             adapter=adapter, max_length=max_length)
                base, _ = answer_logps(engine.model, engine.tokenizer, prompts, answers, len(answers),
                                       adapter=BASE, max_length=max_length)
                per_token = (tuned - base) / counts.clamp(min=1)
            else:
                logps, counts = answer_logps(engine.model, engine.tokenizer, prompts, answers, len(answers),
                                             max_length=max_length)
                per_token = logps / counts.clamp(min=1)
        n = len(chunk)
        gap = (per_token[:n] - per_token[n:]).tolist()
        for i, value in zip(order[start:start + step], gap):
            scores[i] = float(value) if math.isfinite(value) else 0.0
        if progress is not None:
            progress(min(start + step, len(order)), len(order))
    return scores


def suspect_findings(data, scores: list[float], by: str, run: bool, top: int | None = None) -> list[dict]:
    """`suspect_label` findings: the pairs with the most negative margins, most suspect first (negatives only)."""
    rows = data.rows if getattr(data, "rows", None) is not None else list(range(1, len(data.pairs) + 1))
    ranked = sorted((s, r) for s, r in zip(scores, rows) if s < 0)[: top if top is not None else suspect_count(len(rows))]
    what = ("implicit reward margin per token (the run against its base)" if run
            else "log-probability per token, chosen minus rejected")
    return [finding("suspect_label", [row],
                    f"Suspect {rank} of {len(ranked)}: {by} prefers the rejected answer of row {row} "
                    f"({what}: {score:.3f}). Read the pair: if its answers are the wrong way round, swap them or "
                    "drop the pair.")
            for rank, (score, row) in enumerate(ranked, 1)]


def find_suspects(data, spec: str = "embedded", max_length: int | None = None, batch_size: int = 16,
                  engine=None, folders: bool = False, top: int | None = None, progress=None) -> list[dict]:
    """Score every pair of `data` with `spec` (embedded, a hub id, a model folder or a run) and return the
    `suspect_label` findings. `engine`: a ChatEngine already holding the base model (made in fp32 if None)."""
    import torch

    model, run = resolve(spec, folders)
    if engine is None or engine.model_spec != model:
        # deferred: chat imports torch (see margins)
        from .chat import ChatEngine

        engine = ChatEngine(model, dtype=torch.float32)  # fp32: close pairs must not flip on rounding
    adapter = engine.attach_run(run) if run is not None else None
    if run is not None and max_length is None:
        max_length = run.config().max_length
    scores = margins(engine, data.pairs, adapter, max_length, batch_size, progress)
    return suspect_findings(data, scores, f"run {run.id}" if run is not None else model, run is not None, top)
