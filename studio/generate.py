"""Sample K answers per prompt from one model (the SFT baseline or a run's adapter) into a pool to label.

    pool = generate_pool("embedded", None, prompts, k=2, settings=GenerationSettings(temperature=0.8))

Rows go through `ChatEngine.stream` in batches (one copy of the base; a run's adapter routed per row).
The K samples of a prompt sit in the same batch: each row draws its own tokens, so they differ, and a
batch is seeded with `seed + batch number`, so the same prompts and settings give the same pool.
Each finished batch is appended to candidates.jsonl at once; a stop keeps what is done.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, DataError
from .pools import Pool, create_pool, create_pool_at

Progress = Callable[[str, int, "int | None"], None]
K_RANGE = (2, 4)
BASELINE_WORDS = ("baseline", "base", "sft")  # as a model name: the SFT base of the other model / the run


@dataclass(frozen=True)
class Source:
    """A model that answers: a base model alone (round 0) or a run's adapter on it."""

    name: str  # shown and recorded: "SFT baseline (embedded)" or the run id
    model: str  # the base model spec
    run: str | None = None
    adapter_dir: str | None = None
    round: int = 0

    def record(self) -> dict:
        return {"name": self.name, "model": self.model, "run": self.run, "round": self.round}


def round_of(run) -> int:
    """A run's place in a lineage: its config's `round` when set, else 1 (one DPO round over its base)."""
    value = getattr(run.config(), "round", None)
    return int(value) if value else 1


def resolve_source(spec: str, default_model: str = "embedded") -> Source:
    """`embedded`, a model folder or hub id, `baseline` (the SFT `default_model`), or a run id / run folder."""
    from .runs import get_run

    spec = (spec or "").strip()
    if not spec or spec.lower() in BASELINE_WORDS:
        return Source(f"SFT baseline ({default_model})", default_model)
    try:  # a run id, or (the CLI, the operator's own folders) a run folder
        run = get_run(Path(spec) if "/" in spec or os.sep in spec else spec)
    except FileNotFoundError:
        run = None
    if run is not None:
        if not run.has_adapter:
            raise DataError(f"Run {run.id} has no saved adapter yet (state: {run.state}); it cannot answer.")
        return Source(run.id, run.config().model, run.id, str(run.adapter_dir), round_of(run))
    return Source(f"SFT baseline ({spec})", spec)


def load_prompts(source: str | Path | list[str]) -> tuple[list[list[dict]], str]:
    """Prompts as conversations, and a description of where they came from.

    `source`: a list of prompt strings (pasted lines), `preset:NAME` (the preset's probe bank), a text
    file (one prompt a line, # comments), or a preference data file (its prompts, each once).
    """
    from .evaluate import default_probes, read_prompts

    if isinstance(source, (list, tuple)):
        prompts = [p.strip() for p in source if p and p.strip()]
        return [[{"role": "user", "content": p}] for p in prompts], f"{len(prompts)} pasted prompts"
    text = str(source)
    if text.startswith("preset:"):
        from .config import load_preset

        preset = load_preset(text.removeprefix("preset:"))
        prompts = default_probes(preset.config)
        return [[{"role": "user", "content": p}] for p in prompts], f"probe bank of preset {preset.name}"
    path = Path(text)
    if path.suffix.lower() in (".txt", ".md", ""):
        return [[{"role": "user", "content": p}] for p in read_prompts(path)], str(path)
    from .data import load_preferences

    pairs = load_preferences(path)
    seen, convs = set(), []
    for pair in pairs.pairs:
        key = tuple((m["role"], m["content"]) for m in pair["prompt"])
        if key not in seen:
            seen.add(key)
            convs.append(pair["prompt"])
    return convs, f"prompts of {path}"


def check_k(k: int) -> int:
    if not isinstance(k, int) or not K_RANGE[0] <= k <= K_RANGE[1]:
        raise ConfigError(f"k (answers per prompt) must be {K_RANGE[0]} to {K_RANGE[1]}, got {k!r}.")
    return k


def generate_pool(model_spec: str, run=None, prompts=(), k: int = 2, settings=None,
                  progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
                  engine=None, out: str | Path | None = None, batch_size: int = 16,
                  prompts_source: str = "") -> Pool:
    """Sample `k` answers to each prompt from `model_spec` (with `run`'s adapter when given) into a new pool.

    `prompts`: strings or conversations ([{role, content}, ...]). `settings`: a GenerationSettings with
    temperature > 0 (greedy would give k copies of one answer). `engine`: a ChatEngine holding the base
    model (made here when None). `out`: the pool folder (default STUDIO_HOME/pools/<new id>).
    `batch_size`: rows per generate call (prompts x k).
    """
    from .chat import GenerationSettings

    check_k(k)
    settings = settings or GenerationSettings(max_new_tokens=128, temperature=0.8, top_p=0.95)
    if settings.temperature <= 0:
        raise ConfigError("temperature must be above 0 to sample different answers (0 is greedy: "
                          f"the {k} answers would be identical).")
    if settings.max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1, got {settings.max_new_tokens}.")
    source = _source_for(model_spec, run)
    convs = [[{"role": "user", "content": p}] if isinstance(p, str) else list(p) for p in prompts]
    convs = [c for c in convs if c and str(c[-1].get("content", "")).strip()]
    if not convs:
        raise DataError("No prompts to answer: give at least one prompt.")
    info = dict(models=[source.record()], base_model=source.model, k=k, settings=dataclasses.asdict(settings),
                prompts_source=prompts_source, prompts=len(convs), round=source.round + 1,
                seed=settings.seed, pid=os.getpid())
    if out:
        pool = create_pool_at(out, "generate", **info)
    else:
        pool = create_pool("generate", f"{source.run or 'baseline'}-k{k}", **info)
    return fill_pool(pool, [source], convs, k, settings, progress, should_stop, engine, batch_size)


def fill_pool(pool: Pool, sources: list[Source], convs: list[list[dict]], k: int, settings,
              progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
              engine=None, batch_size: int = 16) -> Pool:
    """Answer each conversation k times with each source (k x len(sources) answers a prompt) into `pool`.

    One answer per source with k=1 is how win-rate pools are made: answer 0 from sources[0], 1 from sources[1].
    """
    if len({s.model for s in sources}) > 1:
        raise ConfigError("These models have different base models ("
                          + ", ".join(sorted({s.model for s in sources})) + "); compare models of one base.")
    pool.update(state="generating", started=time.time())
    try:
        if engine is None:
            from .chat import ChatEngine

            engine = ChatEngine(sources[0].model)
        elif engine.model_spec != sources[0].model:
            raise ConfigError(f"This engine holds {engine.model_spec!r}, not {sources[0].model!r}.")
        adapters = [engine.attach(s.adapter_dir, s.run) if s.run else None for s in sources]
        per_prompt = k * len(sources)
        step = max(1, batch_size // per_prompt)  # prompts per generate call
        total, done = len(convs), 0
        if progress:
            progress("generating", 0, total)
        for batch_no, start in enumerate(range(0, total, step)):
            if should_stop and should_stop():
                pool.update(state="stopped", done=done, finished=time.time())
                return pool
            chunk = convs[start:start + step]
            rows = [c for c in chunk for _ in range(per_prompt)]
            names = [adapters[(r % per_prompt) // k] for r in range(len(rows))]
            texts, finished = _answer(engine, rows, names, dataclasses.replace(settings, seed=settings.seed + batch_no))
            for i, conv in enumerate(chunk):
                answers = []
                for r in range(i * per_prompt, (i + 1) * per_prompt):
                    s = sources[(r % per_prompt) // k]
                    answers.append({"text": texts[r], **s.record(), "finished": finished[r]})
                pool.add_candidate(conv, answers)
            done += len(chunk)
            pool.update(done=done)
            if progress:
                progress("generating", done, total)
        pool.update(state="done", done=done, finished=time.time())
        return pool
    except BaseException as e:
        pool.update(state="failed", error=f"{type(e).__name__}: {e}", finished=time.time())
        raise


def _answer(engine, convs, adapters, settings) -> tuple[list[str], list[bool]]:
    """The rows' answers, stripped, and whether each ended by itself (True) or was cut at max_new_tokens."""
    texts = previous = [""] * len(convs)
    steps = 0
    for step_texts in engine.stream(convs, adapters, settings):
        previous, texts = texts, step_texts
        steps += 1
    # A row whose text still grew on the last of max_new_tokens steps had not reached its end-of-turn token.
    cut = steps >= settings.max_new_tokens
    finished = [not (cut and now != before) for now, before in zip(texts, previous)]
    return [t.strip() for t in texts], finished


def _source_for(model_spec: str | None, run) -> Source:
    from .runs import Run, get_run

    if run is None:
        return resolve_source(model_spec or "embedded")
    run = run if isinstance(run, Run) else get_run(run)
    source = resolve_source(str(run.path))
    if model_spec and model_spec != source.model:
        raise ConfigError(f"Run {run.id} was trained on {source.model!r}, not {model_spec!r}.")
    return source
