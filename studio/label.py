"""Label a pool's pairs three ways, each decision recorded with who made it: a person, a rubric, a judge model.

- Human: `next_pair` shows a pair blind (its stored A/B order), `label_human` records A / B / tie /
  both bad / skip at once, `undo_human` takes back the labeller's latest decision.
- Rubric: typed rules from a small YAML file (`load_rubric`), applied in order: the first rule that
  tells the two answers apart decides, and the decision carries the reason ("34 vs 87 words").
- Judge: any model the studio can load reads a pairwise prompt (an editable template with {prompt},
  {a} and {b}) and its next-token log-probabilities of "A" and "B" are compared, in both orders.
  A pair counts only when both orders prefer the same answer; otherwise it is a tie. Scoring one
  token instead of generating a verdict is deterministic, cheap, and never fails to parse.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ConfigError, DataError
from .measures import flesch_reading_ease, is_first_person, sentences, words
from .models import display_name
from .pools import Pair, Pool, get_pool

Progress = Callable[[str, int, "int | None"], None]

# --- human, blind A/B --------------------------------------------------------------------------

CHOICES = ("A", "B", "tie", "both_bad", "skip")


def pair_view(pool: Pool, pair: Pair | str) -> dict:
    """What the blind view shows: the prompt and the two answers in the pair's stored order, no model names."""
    pair = _pair(pool, pair) if isinstance(pair, str) else pair
    c = pool.candidates()[pair.candidate]
    return {"pair": pair.id, "prompt": c["prompt"], "a": c["answers"][pair.a]["text"], "b": c["answers"][pair.b]["text"]}


def next_pair(pool: Pool | str, labeller: str) -> dict | None:
    """The next pair this labeller has not decided (skipped pairs come back after all others); None when done."""
    pool = get_pool(pool)
    mine = pool.decisions(labeller)
    pairs = pool.pairs()
    fresh = [p for p in pairs if (p.id, labeller) not in mine]
    skipped = [p for p in pairs if mine.get((p.id, labeller)) and mine[(p.id, labeller)].outcome == "skip"]
    for p in fresh or skipped:
        return pair_view(pool, p)
    return None


def label_human(pool: Pool | str, pair_id: str, choice: str, labeller: str) -> dict:
    """Record a person's choice on the pair as shown (A / B / tie / both_bad / skip); saved before it returns."""
    pool = get_pool(pool)
    if choice not in CHOICES:
        raise DataError(f"Unknown choice {choice!r}; one of {', '.join(CHOICES)}.")
    pair = _pair(pool, pair_id)
    if choice in ("A", "B"):
        winner = pair.a if choice == "A" else pair.b
        return pool.record(pair, labeller, "win", winner, reason=f"{choice} is better (blind)", shown=choice)
    reason = {"tie": "a tie (blind)", "both_bad": "both bad (blind)", "skip": "skipped"}[choice]
    return pool.record(pair, labeller, choice, reason=reason, shown=choice)


def undo_human(pool: Pool | str, labeller: str) -> str | None:
    """Take back the labeller's latest decision; returns the pair it was on (to show again), or None."""
    target = get_pool(pool).undo(labeller)
    return target["pair"] if target else None


def _pair(pool: Pool, pair_id: str) -> Pair:
    for p in pool.pairs():
        if p.id == pair_id:
            return p
    raise DataError(f"Pool {pool.id} has no pair {pair_id!r}.")


# --- rubric ----------------------------------------------------------------------------------

RULE_TYPES = {
    "finished": "an answer must have ended by itself, not been cut off at the token limit (both cut: both bad)",
    "shorter": "prefer the answer with fewer words",
    "longer": "prefer the answer with more words",
    "first_person": "prefer the higher share of first-person sentences",
    "readability": "prefer the higher Flesch reading ease",
    "must_match": "an answer must match the regular expression `pattern`",
    "must_not_match": "an answer must not match the regular expression `pattern`",
}
DEFAULT_MIN_DIFFERENCE = {"shorter": 1, "longer": 1, "first_person": 0.01, "readability": 1.0}


@dataclass
class Rule:
    type: str
    pattern: str | None = None
    min_difference: float = 0.0
    why: str = ""

    def describe(self) -> str:
        if self.type == "finished":
            return "must end by itself, not at the token limit" + (f" ({self.why})" if self.why else "")
        if self.type in ("must_match", "must_not_match"):
            verb = "must match" if self.type == "must_match" else "must not match"
            return f"{verb} /{self.pattern}/" + (f" ({self.why})" if self.why else "")
        unit = {"shorter": " words", "longer": " words", "first_person": "", "readability": " points"}[self.type]
        text = f"{self.type.replace('_', ' ')} (at least {self.min_difference:g}{unit} apart)"
        return text + (f" ({self.why})" if self.why else "")


@dataclass
class Rubric:
    name: str
    goal: str
    rules: list[Rule] = field(default_factory=list)

    @property
    def labeller(self) -> str:
        return f"rubric:{self.name}"

    def decide(self, x: str, y: str, names: tuple[str, str] = ("answer 1", "answer 2"),
               finished: tuple[bool | None, bool | None] = (None, None)) -> tuple[str, int | None, str]:
        """(outcome, 0 = x wins / 1 = y wins / None, reason) by the first rule that tells x and y apart.

        `finished`: whether each answer ended by itself (a pool records it); None = unknown, and
        a `finished` rule then passes the decision on.
        """

        seen = []
        for n, rule in enumerate(self.rules, 1):
            label = f"rule {n} ({rule.describe()})"
            if rule.type == "finished" and None in finished:
                seen.append(f"rule {n}: not known whether the answers were cut off")
                continue
            if rule.type in ("finished", "must_match", "must_not_match"):
                if rule.type == "finished":
                    ok = [bool(f) for f in finished]
                else:
                    want = rule.type == "must_match"
                    ok = [bool(re.search(rule.pattern, t, re.MULTILINE)) == want for t in (x, y)]
                if ok[0] != ok[1]:
                    good = 0 if ok[0] else 1
                    return "win", good, _trail(seen, f"{label}: only {names[good]} passes")
                if not any(ok):
                    return "both_bad", None, _trail(seen, f"{label}: neither answer passes")
                seen.append(f"rule {n}: both pass")
                continue
            if rule.type in ("shorter", "longer"):
                vx, vy = len(words(x)), len(words(y))
                shown = f"{vx} vs {vy} words"
                better = (vx < vy) if rule.type == "shorter" else (vx > vy)
            elif rule.type == "first_person":
                vx, vy = (_share([is_first_person(s) for s in sentences(t)]) for t in (x, y))
                shown = f"first-person share {vx:.2f} vs {vy:.2f}"
                better = vx > vy
            else:  # readability
                fx, fy = flesch_reading_ease(x), flesch_reading_ease(y)
                if fx is None or fy is None:
                    seen.append(f"rule {n}: no readability for an answer without words")
                    continue
                vx, vy = fx, fy
                shown = f"reading ease {vx:.0f} vs {vy:.0f}"
                better = vx > vy
            if abs(vx - vy) >= max(rule.min_difference, 1e-12):
                good = 0 if better else 1
                return "win", good, _trail(seen, f"{label}: {shown} → {names[good]}")
            seen.append(f"rule {n}: {shown}, too close")
        return "tie", None, "no rule tells them apart (" + "; ".join(seen) + ")"


def _trail(seen: list[str], decisive: str) -> str:
    """The deciding rule, after what the rules before it saw (so a decision explains itself)."""
    return "; ".join([*seen, decisive])


def _share(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def load_rubric(source: str | Path, name: str | None = None) -> Rubric:
    """A rubric from a YAML file (or YAML text): `name`, `goal`, and a list of typed `rules`.

        name: short-answers
        goal: Short answers that say only what was asked.
        rules:
          - type: must_match        # or must_not_match
            pattern: '\\w'
            why: an empty answer says nothing
          - type: finished          # ended by itself, not cut at the token limit (pools record it)
          - type: shorter           # or longer, first_person, readability
            min_difference: 10      # words (points of reading ease; share of sentences for first_person)
    """
    text, origin = str(source), "rubric"
    path = Path(text) if "\n" not in text and len(text) < 4096 else None
    if path is not None and path.suffix.lower() in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"No rubric file {path}")
        text, origin = path.read_text(encoding="utf-8"), path.name
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{origin} is not valid YAML: {e}") from None
    if isinstance(values, dict):
        unknown = sorted(set(values) - {"name", "goal", "rules"})
        if unknown:
            raise ConfigError(f"{origin}: unknown key(s) {', '.join(unknown)}; a rubric has name, goal and rules.")
    if not isinstance(values, dict) or not isinstance(values.get("rules"), list) or not values["rules"]:
        raise ConfigError(f"{origin} must be a mapping with a non-empty list under `rules` "
                          f"(rule types: {', '.join(RULE_TYPES)}).")
    rules = [_rule(r, n, origin) for n, r in enumerate(values["rules"], 1)]
    default_name = Path(origin).stem.split(".")[0] if origin != "rubric" else "rubric"
    return Rubric(str(name or values.get("name") or default_name), str(values.get("goal") or "").strip(), rules)


def _rule(values, n: int, origin: str) -> Rule:
    where = f"{origin}, rule {n}"
    if not isinstance(values, dict) or "type" not in values:
        raise ConfigError(f"{where}: a rule is a mapping with a `type` ({', '.join(RULE_TYPES)}).")
    kind = values["type"]
    if kind not in RULE_TYPES:
        raise ConfigError(f"{where}: unknown type {kind!r}; one of {', '.join(RULE_TYPES)}.")
    allowed = ({"type", "why", "pattern"} if kind.startswith("must") else {"type", "why"} if kind == "finished"
               else {"type", "why", "min_difference"})
    extra = sorted(set(values) - allowed)
    if extra:
        raise ConfigError(f"{where} ({kind}): unknown key(s) {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}.")
    if kind == "finished":
        return Rule(kind, why=str(values.get("why") or ""))
    if kind.startswith("must"):
        pattern = values.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"{where} ({kind}): `pattern` must be a regular expression.")
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"{where} ({kind}): pattern {pattern!r} is not a valid regular expression: {e}") from None
        return Rule(kind, pattern=pattern, why=str(values.get("why") or ""))
    minimum = values.get("min_difference", DEFAULT_MIN_DIFFERENCE[kind])
    if not isinstance(minimum, (int, float)) or isinstance(minimum, bool) or minimum < 0:
        raise ConfigError(f"{where} ({kind}): min_difference must be a number >= 0, got {minimum!r}.")
    return Rule(kind, min_difference=float(minimum), why=str(values.get("why") or ""))


def answer_names(candidate: dict, pair: Pair) -> tuple[str, str]:
    """How a decision names the pair's two answers: by model when they differ, else answer 1 / answer 2."""
    first, second = candidate["answers"][pair.first], candidate["answers"][pair.second]
    if first.get("name") and second.get("name") and first["name"] != second["name"]:
        return first["name"], second["name"]
    return f"answer {pair.first + 1}", f"answer {pair.second + 1}"


def label_with_rubric(pool: Pool | str, rubric: Rubric, progress: Progress | None = None,
                      should_stop: Callable[[], bool] | None = None) -> dict:
    """Decide every pair of the pool with the rubric (a re-run records fresh decisions that stand over older ones)."""
    pool = get_pool(pool)
    candidates, pairs = pool.candidates(), pool.pairs()
    counts = {"win": 0, "tie": 0, "both_bad": 0}
    for n, pair in enumerate(pairs):
        if should_stop and should_stop():
            break
        c = candidates[pair.candidate]
        names = answer_names(c, pair)
        x, y = c["answers"][pair.first], c["answers"][pair.second]
        outcome, good, reason = rubric.decide(x["text"], y["text"], names, (x.get("finished"), y.get("finished")))
        winner = None if good is None else (pair.first, pair.second)[good]
        pool.record(pair, rubric.labeller, outcome, winner, reason=reason, goal=rubric.goal)
        counts[outcome] += 1
        if progress:
            progress("rubric", n + 1, len(pairs))
    return {"labeller": rubric.labeller, **counts}


# --- judge model -----------------------------------------------------------------------------

DEFAULT_TEMPLATE = """Two assistants answered the same request. Which answer is better: more helpful, correct and clear?

Request:
{prompt}

Answer A:
{a}

Answer B:
{b}

Reply with one letter: A or B."""
WEAK_JUDGE_NOTE = ("The embedded SmolLM2-135M is a weak judge: it barely reads the answers and tends to pick one "
                   "position, so most pairs end as ties. A bigger instruct model (7B or more) on a GPU is the real use.")


def check_template(template: str) -> str:
    missing = [k for k in ("{prompt}", "{a}", "{b}") if k not in (template or "")]
    if missing:
        raise ConfigError(f"The judge template must contain {', '.join(missing)} (where the prompt and the two "
                          "answers go).")
    return template


def fill_template(template: str, prompt: str, a: str, b: str) -> str:
    # str.replace, not format: a template may hold other braces (JSON examples), answers may hold any text.
    return template.replace("{prompt}", prompt).replace("{a}", a).replace("{b}", b)


class Judge:
    """A model that scores "A" against "B" as the first token of its reply to a filled template."""

    def __init__(self, model_spec: str = "embedded", template: str = DEFAULT_TEMPLATE, engine=None):
        import torch

        self.template = check_template(template)
        if engine is None:
            # deferred: chat imports torch; a rubric labels a pool without it
            from .chat import ChatEngine

            engine = ChatEngine(model_spec, dtype=torch.float32)  # fp32: close calls must not flip on rounding
        self.engine = engine
        self.model_spec = engine.model_spec
        tok = engine.tokenizer
        self.ids = []
        for letter in ("A", "B"):
            ids = tok.encode(letter, add_special_tokens=False)
            if len(ids) != 1:
                raise ConfigError(f"The judge's tokenizer splits {letter!r} into {len(ids)} tokens; "
                                  "it cannot score a one-letter verdict.")
            self.ids.append(ids[0])

    @property
    def labeller(self) -> str:
        return f"judge:{display_name(self.model_spec)}"

    def margins(self, items: list[tuple[str, str, str]], batch_size: int = 8) -> list[float]:
        """log P("A") - log P("B") for each (prompt, a, b): above 0 means the judge prefers A."""
        import torch

        engine = self.engine
        rows = [engine.prompt_ids([{"role": "user", "content": fill_template(self.template, *item)}]) for item in items]
        pad = engine.tokenizer.pad_token_id or 0
        out: list[float] = []
        with engine._lock, torch.inference_mode():
            for start in range(0, len(rows), batch_size):
                chunk = rows[start:start + batch_size]
                width = max(len(r) for r in chunk)
                # Right padding: each row's real tokens keep positions 0..n-1 and never see the pads after them.
                ids = torch.tensor([r + [pad] * (width - len(r)) for r in chunk], device=engine.device)
                mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in chunk], device=engine.device)
                kwargs = {}
                if hasattr(engine.model, "peft_config"):
                    kwargs["adapter_names"] = ["__base__"] * len(chunk)
                logits = engine.model(input_ids=ids, attention_mask=mask, **kwargs).logits
                last = torch.tensor([len(r) - 1 for r in chunk], device=engine.device)
                logps = torch.log_softmax(logits[torch.arange(len(chunk)), last].float(), dim=-1)
                out.extend((logps[:, self.ids[0]] - logps[:, self.ids[1]]).tolist())
        return out


def judge_pool(pool: Pool | str, judge: Judge, progress: Progress | None = None,
               should_stop: Callable[[], bool] | None = None, batch_size: int = 8) -> dict:
    """Judge each pair this judge has not decided yet, in both orders; a stop keeps the pairs already judged."""
    pool = get_pool(pool)
    candidates = pool.candidates()
    done = pool.decisions(judge.labeller)
    todo = [p for p in pool.pairs() if (p.id, judge.labeller) not in done]
    counts = {"win": 0, "tie": 0, "judged": 0, "already": len(done)}
    per_call = max(1, batch_size // 2)
    if progress:
        progress("judging", 0, len(todo))
    for start in range(0, len(todo), per_call):
        if should_stop and should_stop():
            break
        chunk = todo[start:start + per_call]
        items = []
        for p in chunk:
            c = candidates[p.candidate]
            x, y = c["answers"][p.first]["text"], c["answers"][p.second]["text"]
            items += [(c["prompt"], x, y), (c["prompt"], y, x)]  # first as A, then first as B
        margins = judge.margins(items, batch_size)
        for i, p in enumerate(chunk):
            names = answer_names(candidates[p.candidate], p)
            outcome, good, reason = both_orders(margins[2 * i], margins[2 * i + 1], names)
            winner = None if good is None else (p.first, p.second)[good]
            pool.record(p, judge.labeller, outcome, winner, reason=reason,
                        margins=[round(margins[2 * i], 4), round(margins[2 * i + 1], 4)])
            counts[outcome] += 1
            counts["judged"] += 1
        if progress:
            progress("judging", min(start + per_call, len(todo)), len(todo))
    return {"labeller": judge.labeller, **counts}


def both_orders(first_as_a: float, first_as_b: float, names: tuple[str, str] = ("answer 1", "answer 2")):
    """(outcome, 0 / 1 / None, reason) from the two margins log P(A) - log P(B).

    `first_as_a`: the first answer shown as A; `first_as_b`: the first answer shown as B. The pair is
    won only when both orders prefer the same answer; a disagreement (position bias) or a zero is a tie.
    """
    pick1 = 0 if first_as_a > 0 else 1 if first_as_a < 0 else None
    pick2 = 1 if first_as_b > 0 else 0 if first_as_b < 0 else None
    said = (f"{names[0]} as A: log P(A) - log P(B) = {first_as_a:+.3f}; "
            f"{names[1]} as A: {first_as_b:+.3f}")
    if pick1 is not None and pick1 == pick2:
        return "win", pick1, f"{said}: both orders prefer {names[pick1]}"
    if pick1 is None or pick2 is None:
        return "tie", None, f"{said}: no preference in one order, a tie"
    return "tie", None, f"{said}: the orders disagree (position bias), a tie"
