"""What DPO changed on held-out pairs: preference accuracy (baseline vs tuned), implicit rewards, drift, damage.

Baseline and tuned are scored the same way, from one copy of the base weights: the tuned scores
with the run's adapter on, the baseline scores with it switched off (PEFT's per-row `adapter_names`,
"__base__" = off), in the same batches, in fp32 unless the caller hands over another engine.

    from studio.evaluate import evaluate_run
    result = evaluate_run("20250101-120000-twin-style-cpu")     # also saved as eval.json in the run folder

The probe answers come from `studio.probes`, their measures and the damage warnings from `studio.measures`.
"""

from __future__ import annotations

import dataclasses
import inspect
import time

import torch

from .chat import ChatEngine
from .data import Columns, load_preferences
from .errors import EvalError  # noqa: F401 - re-exported: callers catch it from here
from .measures import PROBE_KEYS, chosen_mean_words, damage_warnings, length_ratio, measures, probe_comparison
from .models import NO_ADAPTER as BASE, chat_ids
from .objectives import reward_beta
from .probes import baseline_answers, column_answers, default_probes, probe_settings
from .runs import Run, get_run
from .training_data import load_run_data


# --- log-probabilities ------------------------------------------------------------------------


def _encode_pair(tokenizer, prompt: list[dict], answer: str) -> tuple[list[int], int]:
    """Token ids of prompt+answer as the trainer sees them, and where the answer starts."""
    prompt_ids = chat_ids(tokenizer, prompt, add_generation_prompt=True)
    full = chat_ids(tokenizer, prompt + [{"role": "assistant", "content": answer}])
    start = 0
    while start < min(len(prompt_ids), len(full)) and prompt_ids[start] == full[start]:
        start += 1
    return full, start


def _keeps_logits(model) -> bool:
    """Whether the model (under its PEFT wrapper) computes logits for the last positions only when asked."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


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
    keeps_logits = _keeps_logits(model)  # once: inspecting the forward signature is not free
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
        # Only the answers are scored: the vocabulary projection and its softmax (a fifth of the work on a small
        # model) run from the last position before the earliest answer on, and no cache is kept.
        keep = max(1, min(width, width - min(start for _, start in chunk) + 1))
        if keeps_logits:
            kwargs["logits_to_keep"] = keep
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False,
                       **kwargs).logits.float()[:, -keep:]
        logps = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = input_ids[:, width - keep + 1:].to(device)
        token_logps = logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        m = answer_mask[:, width - keep + 1:].to(device)
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

    cfg = run.config()
    if data:
        pairs = load_preferences(data, Columns(), tokenizer=tokenizer, max_length=cfg.max_length)
        _paired_only(pairs, run, str(data))
        return pairs, {"source": str(data), "split": "all usable pairs of the file"}
    _, _, held_out = load_run_data(cfg, tokenizer)
    if not len(held_out):
        raise EvalError(f"Run {run.id} held out no pairs (eval_fraction 0, no eval_data): give a file with --data.")
    _paired_only(held_out, run, str(cfg.eval_data or cfg.data))
    split = "eval_data file" if cfg.eval_data else f"{cfg.eval_fraction:.0%} of data held out (seed {cfg.seed})"
    return held_out, {"source": str(cfg.eval_data or cfg.data), "split": split}


def _paired_only(pairs, run: Run, source: str) -> None:
    """Preference accuracy compares a chosen with a rejected answer: single thumbs-up/down answers have no pair."""
    if pairs.unpaired:
        raise EvalError(
            f"Run {run.id}'s held-out data ({source}) holds single answers with a thumbs up or down, and held-out "
            "preference accuracy compares a chosen with a rejected answer to the same prompt. Evaluate it on a file "
            "of pairs (--data FILE in the CLI, the held-out file in Compare), e.g. the pairs the pool was built from.")


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
        scores = preference_scores(engine.model, engine.tokenizer, pairs.pairs, adapter, reward_beta(cfg), batch_size,
                                   max_length=cfg.max_length)
    probes = list(probes) if probes is not None else default_probes(run)
    settings = settings or probe_settings()
    answers, finished = column_answers(engine, run, adapter, probes, settings) if probes else ([], [])
    base_answers, base_finished = baseline_answers(engine, probes, settings) if probes else ([], [])
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
        "objective": cfg.objective,
        # The scale of the implicit rewards above: the run's beta for DPO and KTO; 1 for ORPO and SimPO, which
        # optimise no reward against the base (studio.objectives.reward_beta).
        "beta": reward_beta(cfg),
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


# --- one row per run ---------------------------------------------------------------------------

EVAL_KEYS = ("pairs", "baseline_accuracy", "tuned_accuracy", "reward_accuracy", "mean_margin", "kl_drift",
             *PROBE_KEYS, "chosen_mean_words", "chosen_length_ratio", "damage")


def result_row(run: Run, result: dict | None = None) -> dict:
    """A run as one row of an accuracy table: swept values, state, training figures, held-out numbers.

    `result` defaults to the run's eval.json; the keys of a missing evaluation are left out.
    """
    s = run.summary()
    swept = (run.read_json("sweep.json") or {}).get("values", {})
    try:
        objective = run.config().objective
    except Exception:  # noqa: BLE001 - a run folder without a readable config still gets its row
        objective = None
    row = {"run": run.id, "objective": objective, **swept, "state": s["state"], "step": s["step"],
           "seconds": round(s["seconds"], 1) if s["seconds"] is not None else None,
           "loss": s["loss"], "margins": s["margins"]}
    result = result if result is not None else run.read_json("eval.json") or {}
    row.update({k: result[k] for k in (*EVAL_KEYS, "error") if k in result})
    if "damage" in row:  # one table cell: the warnings as text, empty when there are none
        row["damage"] = " ".join(f"⚠ {w}" for w in row["damage"]) or None
    return row
