"""What DPO changed: held-out preference accuracy (baseline vs tuned), implicit rewards, probe grids, and damage.

Baseline and tuned are scored the same way, from one copy of the base weights: the tuned scores
with the run's adapter on, the baseline scores with it switched off (PEFT's per-row `adapter_names`,
"__base__" = off), in the same batches, in fp32 unless the caller hands over another engine.

    from studio.evaluate import evaluate_run, probe_grid, grid_to_markdown
    result = evaluate_run("20250101-120000-twin-style-cpu")     # also saved as eval.json in the run folder
    grid = probe_grid([run_a, run_b], default_probes(run_a))    # SFT baseline + one column per run
    print(grid_to_markdown(grid))

Damage shows in the probe answers (greedy, so they change only when the weights do): the share of
word 4-grams an answer repeats from earlier in itself (a looping answer scores high), distinct-2
across a column (low = the same phrases everywhere), mean length and its ratio to the baseline's,
and the share of answers that end on their own rather than at the token limit. `evaluate_run`
warns (eval.json's `damage`) when held-out accuracy rose while repetition or length moved far from
the baseline's: the preference may have been learned through length or degenerate text. Next to the
baseline's length stands the chosen answers' (`chosen_mean_words`, from the held-out pairs): when the
preference itself is about length (short direct answers), a tuned length near the chosen answers' is
the lesson, not damage, and the warning says so.

Readability is the Flesch reading ease, computed here with a small vowel-group syllable counter
(no dictionary): 206.835 - 1.015 * words/sentences - 84.6 * syllables/words. Higher reads easier;
plain conversational English lands around 60-80, formal padded prose around 20-40.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
import time
from pathlib import Path

import torch

from .errors import EvalError  # noqa: F401 - re-exported: callers catch it from here
from .runs import Run, get_run

from .models import NO_ADAPTER as BASE, chat_ids
BASELINE_NAME = "SFT baseline"
HANDBOOK_PROBE = "Write a paragraph to introduce supervised fine-tuning."
# Used when a run's data has no probes file beside it: the Handbook's probe, then a spread of everyday asks.
GENERIC_PROBES = [
    HANDBOOK_PROBE,
    "Explain the difference between LoRA and full fine-tuning.",
    "How should I start learning to cook?",
    "Any tips for writing a cover letter?",
    "What is the capital of Portugal?",
    "Describe how you would debug a slow database query.",
]
PROBE_MAX_NEW_TOKENS = 160  # long enough for a paragraph; 12 probes x 160 tokens is ~1 min per column on 2 CPU cores




def probe_settings(max_new_tokens: int = PROBE_MAX_NEW_TOKENS, seed: int = 0):
    """The fixed generation settings of probe grids: greedy, so a column changes only when the weights do."""
    from .chat import GenerationSettings

    return GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0, seed=seed)


# --- log-probabilities ------------------------------------------------------------------------


def _encode_pair(tokenizer, prompt: list[dict], answer: str) -> tuple[list[int], int]:
    """Token ids of prompt+answer as the trainer sees them, and where the answer starts."""
    prompt_ids = chat_ids(tokenizer, prompt, add_generation_prompt=True)
    full = chat_ids(tokenizer, prompt + [{"role": "assistant", "content": answer}])
    start = 0
    while start < min(len(prompt_ids), len(full)) and prompt_ids[start] == full[start]:
        start += 1
    return full, start


@torch.no_grad()
def answer_logps(model, tokenizer, prompts: list[list[dict]], answers: list[str], batch_size: int = 8,
                 adapter: str | None = None, max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each answer given its prompt, and the number of answer tokens.

    `adapter` routes every row through one adapter of a PeftModel ("__base__" = adapter off);
    None runs the model as it is. `max_length` cuts prompt+answer from the end, as TRL's
    DPOTrainer does (truncation_mode keep_start), so the scores match what training optimised.
    """
    device = next(model.parameters()).device
    encoded = [_encode_pair(tokenizer, p, a) for p, a in zip(prompts, answers)]
    if max_length:
        encoded = [(ids[:max_length], start) for ids, start in encoded]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sums, counts = [], []
    for i in range(0, len(encoded), batch_size):
        chunk = encoded[i:i + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        answer_mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        for row, (ids, start) in enumerate(chunk):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
            answer_mask[row, start: len(ids)] = True
        kwargs = {"adapter_names": [adapter] * len(chunk)} if adapter else {}
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), **kwargs).logits.float()
        logps = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = input_ids[:, 1:].to(device)
        token_logps = logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        m = answer_mask[:, 1:].to(device)
        sums.append((token_logps * m).sum(-1).cpu())
        counts.append(m.sum(-1).cpu())
    if not sums:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(sums), torch.cat(counts)


@torch.no_grad()
def sequence_logps(model, tokenizer, prompts: list[list[dict]], answers: list[str], batch_size: int = 8,
                   mean: bool = False) -> torch.Tensor:
    """Summed (or per-token mean) log-probability of each answer given its prompt."""
    sums, counts = answer_logps(model, tokenizer, prompts, answers, batch_size)
    return sums / counts.clamp(min=1) if mean else sums


# --- held-out preference accuracy --------------------------------------------------------------


def _engine_for(cfg, engine=None):
    if engine is None:
        from .chat import ChatEngine

        # fp32: close pairs must not flip on rounding, and baseline and tuned are measured alike.
        return ChatEngine(cfg.model, dtype=torch.float32)
    if engine.model_spec != cfg.model:
        raise EvalError(f"This engine holds {engine.model_spec!r} but the run was trained on {cfg.model!r}.")
    return engine


def eval_pairs(run: Run, data: str | None = None, tokenizer=None):
    """The pairs to score and a description of where they came from.

    Without `data`: the run's own held-out split, exactly as training made it. With `data`:
    every usable pair of that file (any layout `data check` reads).
    """
    from .data import Columns, load_preferences, load_run_data

    cfg = run.config()
    if data:
        pairs = load_preferences(data, Columns(), tokenizer=tokenizer, max_length=cfg.max_length)
        return pairs, {"source": str(data), "split": "all usable pairs of the file"}
    _, _, held_out = load_run_data(cfg, tokenizer)
    if not len(held_out):
        raise EvalError(f"Run {run.id} held out no pairs (eval_fraction 0, no eval_data): give a file with --data.")
    split = "eval_data file" if cfg.eval_data else f"{cfg.eval_fraction:.0%} of data held out (seed {cfg.seed})"
    return held_out, {"source": str(cfg.eval_data or cfg.data), "split": split}


def preference_scores(model, tokenizer, pairs: list[dict], adapter: str, beta: float, batch_size: int = 8,
                      max_length: int | None = None) -> dict:
    """Baseline vs tuned on preference pairs.

    - baseline_accuracy / tuned_accuracy: share of pairs where the model gives the chosen answer the
      higher per-token mean log-probability (length-normalised, so a shorter answer gains nothing
      from being short).
    - reward_accuracy: share where DPO's implicit reward beta * (log pi_tuned - log pi_ref), on summed
      log-probabilities, is higher for chosen than for rejected (strictly: an unchanged model scores 0).
    - mean_margin: mean of reward(chosen) - reward(rejected), the quantity DPO's loss pushes up.
    """
    prompts = [p["prompt"] for p in pairs] * 2
    answers = [p["chosen"][-1]["content"] for p in pairs] + [p["rejected"][-1]["content"] for p in pairs]
    tuned, counts = answer_logps(model, tokenizer, prompts, answers, batch_size, adapter=adapter, max_length=max_length)
    base, _ = answer_logps(model, tokenizer, prompts, answers, batch_size, adapter=BASE, max_length=max_length)
    n = len(pairs)
    per_token = lambda s: s / counts.clamp(min=1)  # noqa: E731
    base_mean, tuned_mean = per_token(base), per_token(tuned)
    rewards = beta * (tuned - base)
    margins = rewards[:n] - rewards[n:]
    return {
        "pairs": n,
        "baseline_accuracy": _share(base_mean[:n] > base_mean[n:]),
        "tuned_accuracy": _share(tuned_mean[:n] > tuned_mean[n:]),
        "reward_accuracy": _share(margins > 0),
        "mean_margin": float(margins.mean()) if n else 0.0,
        "mean_reward_chosen": float(rewards[:n].mean()) if n else 0.0,
        "mean_reward_rejected": float(rewards[n:].mean()) if n else 0.0,
        "baseline_logp_gap": float((base_mean[:n] - base_mean[n:]).mean()) if n else 0.0,
        "tuned_logp_gap": float((tuned_mean[:n] - tuned_mean[n:]).mean()) if n else 0.0,
    }


def _share(mask: torch.Tensor) -> float:
    return float(mask.float().mean()) if mask.numel() else 0.0


def kl_drift(model, tokenizer, prompts: list[str], answers: list[str], adapter: str, batch_size: int = 8) -> float | None:
    """How far the tuned model moved from the reference where it actually speaks.

    Per-token mean of log pi_tuned(y) - log pi_ref(y) over the tuned model's own greedy answers y to
    the probe prompts, averaged over probes (empty answers skipped). On sampled answers this would
    be a Monte-Carlo estimate of KL(pi_tuned || pi_ref) per token; on greedy answers it leans high,
    so read it as a drift score: 0 = unchanged, larger = further from the SFT model.
    """
    kept = [(p, a) for p, a in zip(prompts, answers) if a.strip()]
    if not kept:
        return None
    convs = [[{"role": "user", "content": p}] for p, _ in kept]
    texts = [a for _, a in kept]
    tuned, counts = answer_logps(model, tokenizer, convs, texts, batch_size, adapter=adapter)
    base, _ = answer_logps(model, tokenizer, convs, texts, batch_size, adapter=BASE)
    return float(((tuned - base) / counts.clamp(min=1)).mean())


def evaluate_run(run, data: str | None = None, engine=None, probes: list[str] | None = None, settings=None,
                 batch_size: int = 8, save: bool = True) -> dict:
    """Held-out preference accuracy of the SFT baseline and of the run, implicit rewards and drift.

    Saved as eval.json in the run folder (unless save=False). `engine`: a `ChatEngine` holding the
    run's base model (made in fp32 when None). `probes`: prompts for the drift measure and the
    tuned answers kept in eval.json (default: `default_probes(run)`).
    """
    run = run if isinstance(run, Run) else get_run(run)
    if not run.has_adapter:
        raise EvalError(f"Run {run.id} has no saved adapter (state: {run.state}); nothing to evaluate.")
    cfg = run.config()
    t0 = time.time()
    engine = _engine_for(cfg, engine)
    adapter = engine.attach_run(run)
    pairs, source = eval_pairs(run, data, engine.tokenizer)
    with engine._lock:
        scores = preference_scores(engine.model, engine.tokenizer, pairs.pairs, adapter, cfg.beta, batch_size,
                                   max_length=cfg.max_length)
    probes = list(probes) if probes is not None else default_probes(run)
    settings = settings or probe_settings()
    answers, finished = _column_answers(engine, run, adapter, probes, settings) if probes else ([], [])
    base_answers, base_finished = _baseline_answers(engine, probes, settings) if probes else ([], [])
    with engine._lock:
        drift = kl_drift(engine.model, engine.tokenizer, probes, answers, adapter, batch_size) if probes else None
    comparison = (probe_comparison(measures(base_answers, base_finished), measures(answers, finished)) if probes
                  else dict.fromkeys(PROBE_KEYS))
    chosen_words = chosen_mean_words(pairs.pairs)
    result = {
        "run": run.id,
        **scores,
        "kl_drift": drift,
        **comparison,
        "chosen_mean_words": chosen_words,
        "chosen_length_ratio": length_ratio(chosen_words, comparison["mean_words"]),
        "beta": cfg.beta,
        "data": source,
        "max_length": cfg.max_length,
        "dtype": str(next(engine.model.parameters()).dtype).removeprefix("torch."),
        "probes": [{"prompt": p, "answer": a, "ended_on_own": f, "baseline_answer": b, "baseline_ended_on_own": bf}
                   for p, a, f, b, bf in zip(probes, answers, finished, base_answers, base_finished)],
        "probe_settings": dataclasses.asdict(settings),
        "seconds": round(time.time() - t0, 1),
        "time": time.time(),
    }
    result["damage"] = damage_warnings(result)
    if save:
        run.write_json("eval.json", result)
    return result


# --- probe grids ------------------------------------------------------------------------------


def default_probes(run=None) -> list[str]:
    """The probes file beside the run's data (presets/data/<name>.probes.txt), else the Handbook's probe and a few more."""
    cfg = run if run is None or not hasattr(run, "config") else run.config()
    data = getattr(cfg, "data", "") or ""
    if data:
        path = Path(data)
        probes_file = path.with_name(path.name.split(".")[0] + ".probes.txt")
        if probes_file.is_file():
            return read_prompts(probes_file)
    return list(GENERIC_PROBES)


def read_prompts(path: str | Path) -> list[str]:
    """One prompt a line; blank lines and lines starting with # are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No prompts file {path}")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise EvalError(f"{path} holds no prompts (one a line).")
    return prompts


def _generate(engine, prompts: list[str], adapter: str | None, settings) -> tuple[list[str], list[bool]]:
    """Answers to the prompts in one batch, and for each whether it ended on its own (not at the token limit)."""
    texts, finished = [""] * len(prompts), []
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    for texts in engine.stream(conversations, [adapter] * len(prompts), settings, finished=finished):
        pass
    return [t.strip() for t in texts], finished


def _column_answers(engine, run: Run, adapter: str, prompts: list[str], settings,
                    reuse: bool = True) -> tuple[list[str], list[bool]]:
    """A run's answers to the probes and their finish flags, reusing probes.json when prompts, settings, dtype
    and adapter all match."""
    key = _probe_key(engine, run, prompts, settings)
    cached = run.read_json("probes.json") if reuse else None
    if (cached and cached.get("key") == key and len(cached.get("answers", [])) == len(prompts)
            and len(cached.get("finished") or []) == len(prompts)):  # files from before the flags: generate again
        return cached["answers"], cached["finished"]
    answers, finished = _generate(engine, prompts, adapter, settings)
    run.write_json("probes.json", {"key": key, "prompts": prompts, "answers": answers, "finished": finished,
                                   "measures": measures(answers, finished)})
    return answers, finished


def _baseline_answers(engine, prompts: list[str], settings) -> tuple[list[str], list[bool]]:
    """The SFT baseline's answers (adapters off), generated once per engine for the same prompts and settings."""
    key = json.dumps([list(prompts), dataclasses.asdict(settings)])
    cache = getattr(engine, "baseline_answers", None)
    if cache is not None and key in cache:
        return cache[key]
    answers = _generate(engine, prompts, None, settings)
    if cache is not None:
        cache[key] = answers
    return answers


def _probe_key(engine, run: Run, prompts: list[str], settings) -> dict:
    weights = run.adapter_dir / "adapter_model.safetensors"
    return {
        "prompts": list(prompts),
        "settings": dataclasses.asdict(settings),
        "dtype": str(next(engine.model.parameters()).dtype).removeprefix("torch."),
        "adapter_mtime": weights.stat().st_mtime if weights.is_file() else None,
    }


def probe_grid(runs: list, prompts: list[str], engine=None, settings=None, reuse: bool = True) -> dict:
    """Rows: probe prompts; columns: the SFT baseline, then each run; cells: answers with fixed settings.

    Each column is generated in one batch of all prompts, so a column never depends on which other
    runs share the grid. Greedy by default (seeded when sampling), so the same inputs give the same
    grid. A run's column is kept in its probes.json and reused while nothing it depends on changed.
    """
    runs = [r if isinstance(r, Run) else get_run(r) for r in runs]
    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise EvalError("A probe grid needs at least one prompt.")
    models = {r.config().model for r in runs}
    if len(models) > 1:
        raise EvalError(f"These runs use different base models ({', '.join(sorted(models))}); compare runs of one model.")
    for r in runs:
        if not r.has_adapter:
            raise EvalError(f"Run {r.id} has no saved adapter yet (state: {r.state}).")
    settings = settings or probe_settings()
    if engine is None:
        from .chat import ChatEngine

        engine = ChatEngine(models.pop() if models else "embedded", dtype=torch.float32)
    elif models and engine.model_spec not in models:
        raise EvalError(f"This engine holds {engine.model_spec!r} but the runs were trained on {models.pop()!r}.")
    baseline = _baseline_answers(engine, prompts, settings) if reuse else _generate(engine, prompts, None, settings)
    columns = [_column(BASELINE_NAME, *baseline)]
    for r in runs:
        adapter = engine.attach_run(r)
        columns.append(_column(r.id, *_column_answers(engine, r, adapter, prompts, settings, reuse)))
    for c in columns:
        c["measures"]["length_ratio"] = length_ratio(columns[0]["measures"]["words"], c["measures"]["words"])
    return {"prompts": prompts, "columns": columns, "settings": dataclasses.asdict(settings),
            "model": engine.model_spec}


def _column(name: str, answers: list[str], finished: list[bool] | None = None) -> dict:
    return {"name": name, "answers": answers, "measures": measures(answers, finished)}


# --- measures of a column ---------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
# "I" only in capitals ("i.e." is not a person); the rest in any case.
_FIRST_PERSON_I = re.compile(r"\bI\b")
_FIRST_PERSON_OTHER = re.compile(r"\b(?:me|my|mine|myself|we|us|our|ours|ourselves)\b", re.IGNORECASE)


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and _WORD.search(s)]


def syllables(word: str) -> int:
    """Vowel groups, less a silent final e / -es / -ed; at least one. Right for most everyday words."""
    w = word.lower().replace("’", "'").split("'")[0]
    if not w.isalpha():
        return 1
    if len(w) <= 3:
        return 1
    w = re.sub(r"(?:[^laeiouy]es|[^laeiouy]ed|[^laeiouy]e)$", lambda m: m.group(0)[0], w)
    w = re.sub(r"^y", "", w)
    return max(1, len(re.findall(r"[aeiouy]+", w)))


def flesch_reading_ease(text: str) -> float | None:
    ws, ss = words(text), sentences(text)
    if not ws or not ss:
        return None
    return 206.835 - 1.015 * (len(ws) / len(ss)) - 84.6 * (sum(syllables(w) for w in ws) / len(ws))


def is_first_person(sentence: str) -> bool:
    return bool(_FIRST_PERSON_I.search(sentence) or _FIRST_PERSON_OTHER.search(sentence))


def ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """The word n-grams of a text, in order, lower-cased (so "The" and "the" repeat each other)."""
    ws = [w.lower() for w in words(text)]
    return [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]


def repeated_ngram_share(text: str, n: int = 4) -> float | None:
    """Share of the answer's word n-grams that already occurred earlier in the same answer.

    0 for an answer that never repeats itself; an answer that loops one sentence approaches 1.
    None for an answer shorter than n words (it has no n-gram to repeat).
    """
    grams = ngrams(text, n)
    if not grams:
        return None
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)


def distinct_n(texts: list[str], n: int = 2) -> float | None:
    """Distinct n-grams over all n-grams of all the texts together (Li et al. 2016's distinct-n).

    1 when no word pair occurs twice anywhere in the column; low when the answers share the same phrases
    or loop. None when the texts hold no n-gram at all.
    """
    grams = [g for t in texts for g in ngrams(t, n)]
    return len(set(grams)) / len(grams) if grams else None


def length_ratio(reference_words: float | None, words_: float | None) -> float | None:
    """Mean words of a column over a reference's: the baseline's or the chosen answers' (1 = as long; None when
    the reference has no words)."""
    if not reference_words or words_ is None:
        return None
    return round(words_ / reference_words, 3)


def chosen_mean_words(pairs: list[dict]) -> float | None:
    """Mean words of the chosen answers: the length the preference itself asks for."""
    if not pairs:
        return None
    return round(sum(len(words(p["chosen"][-1]["content"])) for p in pairs) / len(pairs), 1)


def measures(answers: list[str], finished: list[bool] | None = None) -> dict:
    """What a column of answers looks like: length, readability, voice, and the signs of damage.

    - words: mean words per answer; readability: mean Flesch reading ease; first_person: share of all
      sentences in the first person;
    - repetition: mean over answers (of at least 4 words) of the share of word 4-grams repeated from
      earlier in the same answer; distinct_2: distinct word pairs over all word pairs of the column;
    - ended_on_own: share of answers that ended on their own (EOS) rather than at the token limit
      (None when `finished` is not known).
    """
    scores = [s for s in (flesch_reading_ease(a) for a in answers) if s is not None]
    all_sentences = [s for a in answers for s in sentences(a)]
    repeats = [r for r in (repeated_ngram_share(a, 4) for a in answers) if r is not None]
    distinct = distinct_n(answers, 2)
    return {
        "words": round(sum(len(words(a)) for a in answers) / len(answers), 1) if answers else 0.0,
        "readability": round(sum(scores) / len(scores), 1) if scores else None,
        "first_person": round(sum(map(is_first_person, all_sentences)) / len(all_sentences), 3) if all_sentences else 0.0,
        "repetition": round(sum(repeats) / len(repeats), 3) if repeats else None,
        "distinct_2": round(distinct, 3) if distinct is not None else None,
        "ended_on_own": round(sum(map(bool, finished)) / len(finished), 3) if finished else None,
    }


MEASURE_LABELS = {
    "words": "mean words",
    "length_ratio": "length vs baseline (ratio of mean words)",
    "readability": "readability (Flesch reading ease)",
    "first_person": "first-person sentences (share)",
    "repetition": "repeated word 4-grams (share, per answer)",
    "distinct_2": "distinct-2 (distinct word pairs / all)",
    "ended_on_own": "ended on their own, not at the token limit (share)",
}


# --- damage: what the probes say next to the accuracy ------------------------------------------

# A healthy SFT model's greedy paragraphs repeat a few percent of their word 4-grams (set phrases, list
# items). One answer that loops scores ~0.5-0.9, so among the ~6-12 probes a rise of 0.05 in the mean is
# about one probe that started looping, or several that pad with the same phrases: worth reading.
REPETITION_RISE = 0.05
# DPO is known to learn length when chosen answers are longer than rejected ones (Park et al. 2024,
# "Disentangling Length from Quality in DPO"). Greedy probes are deterministic, so any change is the
# adapter's; a style shift moves length by tens of percent, so only a change beyond 30% is flagged.
LENGTH_RATIO_BAND = (0.7, 1.3)

PROBE_KEYS = ("repetition", "baseline_repetition", "distinct_2", "baseline_distinct_2", "mean_words",
              "baseline_mean_words", "length_ratio", "ended_on_own", "baseline_ended_on_own")


def probe_comparison(baseline: dict, tuned: dict) -> dict:
    """The damage measures of the tuned answers and the baseline's on the same probes, flat for eval.json."""
    return {
        "repetition": tuned["repetition"], "baseline_repetition": baseline["repetition"],
        "distinct_2": tuned["distinct_2"], "baseline_distinct_2": baseline["distinct_2"],
        "mean_words": tuned["words"], "baseline_mean_words": baseline["words"],
        "length_ratio": length_ratio(baseline["words"], tuned["words"]),
        "ended_on_own": tuned["ended_on_own"], "baseline_ended_on_own": baseline["ended_on_own"],
    }


def damage_warnings(result: dict) -> list[str]:
    """Plain-language warnings for a run whose accuracy rose while its probe answers moved far from the baseline's.

    `result` holds evaluate_run's keys (baseline_accuracy, tuned_accuracy and PROBE_KEYS). Empty when
    accuracy did not rise or the answers stayed close to the baseline's.
    """
    base_acc, tuned_acc = result.get("baseline_accuracy"), result.get("tuned_accuracy")
    if base_acc is None or tuned_acc is None or not tuned_acc > base_acc:
        return []
    rose = f"Held-out accuracy rose ({base_acc:.2f} -> {tuned_acc:.2f})"
    out = []
    rep, base_rep = result.get("repetition"), result.get("baseline_repetition")
    if rep is not None and rep - (base_rep or 0.0) > REPETITION_RISE:
        out.append(f"{rose} while the probe answers repeat themselves: {rep:.0%} of their word 4-grams are repeats, "
                   f"against {base_rep or 0:.0%} for the SFT baseline (flagged above +{REPETITION_RISE:.0%}). "
                   f"Read the answers before trusting the accuracy.")
    ratio = result.get("length_ratio")
    low, high = LENGTH_RATIO_BAND
    if ratio is not None and not low <= ratio <= high:
        way = "longer" if ratio > high else "shorter"
        cut = ""
        ended, base_ended = result.get("ended_on_own"), result.get("baseline_ended_on_own")
        if ended is not None and base_ended is not None and ended < base_ended:
            cut = (f"; only {ended:.0%} of them end on their own (baseline {base_ended:.0%}), the rest hit the token "
                   f"limit, so they are longer still")
        said = (f"{rose} while the probe answers got {way}: {ratio:.2f}x the baseline's mean words "
                f"({result.get('mean_words')} vs {result.get('baseline_mean_words')}; flagged outside {low}-{high}x){cut}.")
        chosen, to_chosen = result.get("chosen_mean_words"), result.get("chosen_length_ratio")
        if to_chosen is not None and low <= to_chosen <= high:
            said += (f" They are about as long as the chosen answers of the held-out pairs ({chosen} words, "
                     f"{to_chosen:.2f}x): the preference carries this length. Check that it is the length you meant.")
        else:
            said += " DPO may have learned length rather than the preference."
            if to_chosen is not None:
                said += f" The chosen answers average {chosen} words ({to_chosen:.2f}x)."
        out.append(said)
    return out


# --- one row per run ---------------------------------------------------------------------------

EVAL_KEYS = ("pairs", "baseline_accuracy", "tuned_accuracy", "reward_accuracy", "mean_margin", "kl_drift",
             *PROBE_KEYS, "chosen_mean_words", "chosen_length_ratio", "damage")


def result_row(run: Run, result: dict | None = None) -> dict:
    """A run as one row of an accuracy table: swept values, state, training figures, held-out numbers.

    `result` defaults to the run's eval.json; the keys of a missing evaluation are left out.
    """
    s = run.summary()
    swept = (run.read_json("sweep.json") or {}).get("values", {})
    row = {"run": run.id, **swept, "state": s["state"], "step": s["step"],
           "seconds": round(s["seconds"], 1) if s["seconds"] is not None else None,
           "loss": s["loss"], "margins": s["margins"]}
    result = result if result is not None else run.read_json("eval.json") or {}
    row.update({k: result[k] for k in (*EVAL_KEYS, "error") if k in result})
    if "damage" in row:  # one table cell: the warnings as text, empty when there are none
        row["damage"] = " ".join(f"⚠ {w}" for w in row["damage"]) or None
    return row


# --- export -----------------------------------------------------------------------------------


def grids_root() -> Path:
    """Where grids built on request are kept: under the exports folder, which the web app serves downloads from."""
    from .export import exports_dir

    return exports_dir() / "grids"


def publish_grid(grid: dict, name: str) -> list[str]:
    """Save the grid under grids_root()/name; the CSV and Markdown paths to download."""
    paths = save_grid(grid, grids_root() / name)
    return [str(paths["csv"]), str(paths["markdown"])]


def latest_grid() -> tuple[dict | None, list[str]]:
    """The newest grid built on request or by a sweep, and its CSV and Markdown files."""
    from .sweep import sweeps_root

    found = [p for root in (grids_root(), sweeps_root()) if root.is_dir() for p in root.glob("*/grid.json")]
    if not found:
        return None, []
    newest = max(found, key=lambda p: p.stat().st_mtime)
    grid = json.loads(newest.read_text(encoding="utf-8"))
    if newest.parent.parent == sweeps_root():  # a sweep's grid: copy it where downloads are served from
        return grid, publish_grid(grid, newest.parent.name)
    return grid, [str(newest.with_suffix(".csv")), str(newest.with_suffix(".md"))]


def save_grid(grid: dict, folder: str | Path, name: str = "grid") -> dict[str, Path]:
    """The grid as <name>.json (to show it again), .csv and .md (to share it) in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / f"{name}.json", "csv": folder / f"{name}.csv", "markdown": folder / f"{name}.md"}
    paths["json"].write_text(json.dumps(grid, indent=2), encoding="utf-8")
    paths["csv"].write_text(grid_to_csv(grid), encoding="utf-8")
    paths["markdown"].write_text(grid_to_markdown(grid), encoding="utf-8")
    return paths


def grid_to_csv(grid: dict) -> str:
    """One row per prompt, one column per model; the measures follow as rows named in brackets."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    names = [c["name"] for c in grid["columns"]]
    w.writerow(["prompt", *names])
    for i, prompt in enumerate(grid["prompts"]):
        w.writerow([prompt, *(c["answers"][i] for c in grid["columns"])])
    for key, label in MEASURE_LABELS.items():
        w.writerow([f"[{label}]", *(_fmt(c["measures"].get(key)) for c in grid["columns"])])
    return out.getvalue()


def grid_to_markdown(grid: dict) -> str:
    """A Markdown table (answers on one line each, newlines as <br>), the measures as the last rows."""
    names = [c["name"] for c in grid["columns"]]
    lines = ["| prompt | " + " | ".join(_md(n) for n in names) + " |", "|" + " --- |" * (len(names) + 1)]
    for i, prompt in enumerate(grid["prompts"]):
        lines.append(f"| {_md(prompt)} | " + " | ".join(_md(c["answers"][i]) for c in grid["columns"]) + " |")
    for key, label in MEASURE_LABELS.items():
        lines.append(f"| **{label}** | " + " | ".join(_fmt(c["measures"].get(key)) for c in grid["columns"]) + " |")
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)
