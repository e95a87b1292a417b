"""Win rate of model A against model B on held-out prompts: wins, ties, losses, a 95% interval, length control.

    pool = comparison_pool("20250101-run", "baseline", prompts)   # one answer from each model per prompt
    label_with_rubric(pool, rubric)                                # or judge_pool, or people in the Label tab
    result = measure(pool, "rubric:short-answers")

- win rate: (wins + ties / 2) / decided pairs, from A's side ("both bad" counts as a tie; skips not at all).
- 95% interval: Wilson's score interval on that share (ties as half a win). Wilson, not the normal
  approximation, because with 30 prompts and rates near 0.8 the normal interval overshoots 1.
- length-controlled win rate: a logistic regression of the outcome on the length difference,
  p = sigmoid(b0 + b1 * tanh((words A - words B) / sd)), read at zero difference: sigmoid(b0).
  This is AlpacaEval 2's idea (there with more terms). No regression library is installed here
  (no scikit-learn or statsmodels), and two parameters need only a few Newton steps in numpy; a tiny
  L2 penalty (0.01) keeps them finite when every pair goes one way.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable

import numpy as np

from .errors import EvalError
from .generate import BASELINE_WORDS, Source, fill_pool, resolve_source
from .generation import defaults
from .measures import words
from .pools import Pool, create_pool, create_pool_at, get_pool

Z95 = 1.959963984540054  # the 97.5th percentile of the standard normal
L2 = 0.01


def comparison_pool(model_a: str, model_b: str, prompts: list, settings=None, progress=None,
                    should_stop: Callable[[], bool] | None = None, engine=None, out=None,
                    prompts_source: str = "") -> Pool:
    """A pool with one answer from each model per prompt (answer 0 from A, answer 1 from B).

    A model is `embedded` / a model folder / a hub id, a run id, or `baseline` (the SFT base of the
    other model). Greedy by default, so the comparison is reproducible.
    """
    settings = settings or defaults("winrate")
    a, b = _pair_of_sources(model_a, model_b)
    convs = [[{"role": "user", "content": p}] if isinstance(p, str) else list(p) for p in prompts]
    if not convs:
        raise EvalError("No prompts to compare on: give at least one held-out prompt.")

    info = dict(models=[a.record(), b.record()], base_model=a.model, k=1, settings=dataclasses.asdict(settings),
                prompts_source=prompts_source, prompts=len(convs), round=None, seed=settings.seed, pid=os.getpid())
    label = f"{_short(a)}-vs-{_short(b)}"
    pool = create_pool_at(out, "winrate", **info) if out else create_pool("winrate", label, **info)
    return fill_pool(pool, [a, b], convs, 1, settings, progress, should_stop, engine)


def _pair_of_sources(model_a: str, model_b: str) -> tuple[Source, Source]:
    base_words = lambda s: (s or "").strip().lower() in BASELINE_WORDS  # noqa: E731
    if base_words(model_a) and base_words(model_b):
        raise EvalError("Both models are the baseline; name a run or a model for at least one of them.")
    if base_words(model_a):
        b = resolve_source(model_b)
        return resolve_source(model_a, b.model), b
    a = resolve_source(model_a)
    return a, resolve_source(model_b, a.model)


def _short(source: Source) -> str:
    return source.run[-24:] if source.run else "baseline"


# --- outcomes and the arithmetic --------------------------------------------------------------


def outcomes(pool: Pool | str, labeller: str | None = None) -> tuple[list[float], list[int], list[int], str]:
    """Per decided pair: A's score (1 win, 0.5 tie or both bad, 0 loss), words of A's and B's answers; the labeller."""

    pool = get_pool(pool)
    if pool.info().get("kind") != "winrate":
        raise EvalError(f"Pool {pool.id} is not a win-rate pool (one answer per model); make one with `winrate`.")
    labellers = pool.labellers()
    if labeller is None:
        if len(labellers) != 1:
            found = "no labels yet" if not labellers else "several labellers: " + ", ".join(labellers)
            raise EvalError(f"Pool {pool.id} has {found}; name the labeller whose decisions count.")
        labeller = labellers[0]
    candidates = pool.candidates()
    pairs = {p.id: p for p in pool.pairs()}
    scores, len_a, len_b = [], [], []
    for (pair_id, _), d in sorted(pool.decisions(labeller).items()):
        if d.outcome == "skip" or pair_id not in pairs:
            continue
        c = candidates[pairs[pair_id].candidate]
        scores.append(0.5 if d.outcome != "win" else 1.0 if d.winner == 0 else 0.0)
        len_a.append(len(words(c["answers"][0]["text"])))
        len_b.append(len(words(c["answers"][1]["text"])))
    return scores, len_a, len_b, labeller


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a share; `successes` may be fractional (ties count half)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def length_controlled(scores: list[float], len_a: list[int], len_b: list[int], l2: float = L2) -> dict:
    """Fit p = sigmoid(b0 + b1 * tanh(diff / sd)) by penalised Newton steps; the win rate at zero difference."""
    y = np.asarray(scores, dtype=float)
    diff = np.asarray(len_a, dtype=float) - np.asarray(len_b, dtype=float)
    sd = float(diff.std()) or 1.0
    X = np.column_stack([np.ones_like(diff), np.tanh(diff / sd)])
    beta = np.zeros(2)
    for _ in range(100):
        p = 1 / (1 + np.exp(-(X @ beta)))
        grad = X.T @ (y - p) - l2 * beta
        hess = X.T @ (X * (p * (1 - p))[:, None]) + l2 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    return {"lc_win_rate": float(1 / (1 + math.exp(-beta[0]))), "intercept": float(beta[0]),
            "length_slope": float(beta[1]), "length_sd": sd}


def summarize(scores: list[float], len_a: list[int], len_b: list[int]) -> dict:
    """Wins, ties, losses, win rate with its Wilson 95% interval, the length-controlled win rate, mean lengths."""
    n = len(scores)
    if n == 0:
        raise EvalError("No decided pairs yet: label the pool first (skipped pairs do not count).")
    wins = sum(1 for s in scores if s == 1.0)
    losses = sum(1 for s in scores if s == 0.0)
    ties = n - wins - losses
    rate = (wins + ties / 2) / n
    low, high = wilson_interval(wins + ties / 2, n)
    return {"pairs": n, "wins": wins, "ties": ties, "losses": losses, "win_rate": rate,
            "ci95": [low, high], "interval": "Wilson score, ties as half a win",
            **length_controlled(scores, len_a, len_b),
            "mean_words_a": sum(len_a) / n, "mean_words_b": sum(len_b) / n}


def measure(pool: Pool | str, labeller: str | None = None, save: bool = True) -> dict:
    """The win rate of the pool's model A over model B by one labeller's decisions (saved in pool.json)."""
    pool = get_pool(pool)
    scores, len_a, len_b, labeller = outcomes(pool, labeller)
    info = pool.info()
    models = info.get("models", [{}, {}])
    result = {"pool": pool.id, "model_a": models[0].get("name"), "model_b": models[1].get("name"),
              "labeller": labeller, **summarize(scores, len_a, len_b), "time": time.time()}
    # Of the ties, how many were "both bad": a table that says "both bad" and a line that says "tie" must agree.
    pairs = {p.id for p in pool.pairs()}
    result["both_bad"] = min(result["ties"], sum(1 for (pair_id, _), d in pool.decisions(labeller).items()
                                                 if d.outcome == "both_bad" and pair_id in pairs))
    if save:
        pool.update(winrate={**info.get("winrate", {}), labeller: result})
    return result


def describe(result: dict) -> str:
    """Two lines for a terminal or a caption."""
    low, high = result["ci95"]
    return (f"{result['model_a']} vs {result['model_b']} ({result['labeller']}, {result['pairs']} prompts): "
            f"{result['wins']} wins, {_ties(result)}, {result['losses']} losses; "
            f"win rate {result['win_rate']:.3f} (95% CI {low:.3f}-{high:.3f}, Wilson)\n"
            f"length-controlled win rate {result['lc_win_rate']:.3f}; mean words "
            f"{result['mean_words_a']:.1f} (A) vs {result['mean_words_b']:.1f} (B)")


def _ties(result: dict) -> str:
    """'3 ties' or '1 tie · 2 both bad': the ties and the pairs where neither answer was good, each by its name
    (both count as half a win)."""
    bad = result.get("both_bad") or 0
    plain = result["ties"] - bad
    parts = ([f"{plain} tie{'s' if plain != 1 else ''}"] if plain or not bad else []) + ([f"{bad} both bad"] if bad else [])
    return " · ".join(parts)


ties_text = _ties  # the UI words it the same way
