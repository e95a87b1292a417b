"""What is wrong with a preference data set, beyond the rows that cannot be read: the data doctor's findings.

Each finding is `{"kind", "rows", "message"}`: a kind of KINDS, the 1-based rows involved (as
`DataReport.dropped` numbers them; for `eval_overlap` the training rows) and plain words saying what it
does to training and what to do. Everything here is model-free and linear in the number of pairs, except
`truncated`, which needs the run's tokenizer; `suspect_label` (a model's opinion) lives in suspects.py.

    duplicate       a pair identical to an earlier one (prompt, chosen and rejected)
    near_duplicate  identical once whitespace, case and surrounding punctuation are normalised
    conflict        the same prompt with the two answers the other way round elsewhere in the file
    eval_overlap    a training prompt that is also a held-out prompt
    truncated       prompt + answer longer than max_length: tokens each side loses, or no signal left
    length_bias     chosen shorter (or longer) than rejected in most pairs
    small_eval      fewer held-out pairs than make a usable accuracy
    suspect_label   (suspects.py) pairs a model prefers the rejected answer of most strongly
"""

from __future__ import annotations

import math
import re

from ..models import chat_ids

KINDS = ("duplicate", "near_duplicate", "conflict", "eval_overlap", "truncated", "length_bias", "small_eval",
         "suspect_label")
# Kinds whose rows a cleaned copy can drop, and which of a finding's rows go: the later copies of a duplicate
# (the first stays), both sides of a conflict (which one is right cannot be told), a leaked training row.
DROPPABLE = ("duplicate", "near_duplicate", "conflict", "eval_overlap", "suspect_label")
SMALL_EVAL = 20  # held-out pairs below which one pair moves the accuracy by 5 points or more
BIAS_SHARE = 0.7  # a length difference in this share of pairs or more is a preference the model will learn
BIAS_MIN_PAIRS = 8
_EDGES = re.compile(r"^[\W_]+|[\W_]+$")


# --------------------------------------------------------------------------- keys


def normal(text: str) -> str:
    """Text as a near-duplicate sees it: case folded, whitespace collapsed, punctuation at either end removed."""
    return _EDGES.sub("", " ".join(text.casefold().split()))


def prompt_key(pair: dict) -> str:
    """A pair's prompt, normalised: pairs with the same key ask the same thing (the split keeps them together)."""
    return "\x1e".join(f"{m['role']}\x1f{normal(m['content'])}" for m in pair["prompt"])


def _exact_key(pair: dict) -> tuple:
    return (tuple((m["role"], m["content"]) for m in pair["prompt"]), _answer(pair, "chosen"),
            _answer(pair, "rejected"))


def _answer(pair: dict, part: str) -> str:
    return pair[part][-1]["content"]


def _rows(data) -> list[int]:
    """The source row of each pair (1-based); pair order when a set was built without them."""
    rows = getattr(data, "rows", None)
    return list(rows) if rows is not None else list(range(1, len(data.pairs) + 1))


def finding(kind: str, rows: list[int], message: str) -> dict:
    if kind not in KINDS:
        raise ValueError(f"unknown finding kind {kind!r}")
    return {"kind": kind, "rows": sorted(set(rows)), "message": message}


def _rows_text(rows: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return f"rows {shown}" + (f" and {len(rows) - limit} more" if len(rows) > limit else "") if len(rows) > 1 \
        else f"row {shown}"


# --------------------------------------------------------------------------- the model-free findings


def repeats(data) -> list[dict]:
    """`duplicate`, `near_duplicate` and `conflict` findings, one per repeated pair (rows: the first and the copy)."""
    out = []
    exact: dict[tuple, int] = {}
    near: dict[tuple, int] = {}
    by_answers: dict[tuple, int] = {}
    for row, pair in zip(_rows(data), data.pairs):
        key = _exact_key(pair)
        prompt, chosen, rejected = prompt_key(pair), normal(_answer(pair, "chosen")), normal(_answer(pair, "rejected"))
        if key in exact:
            out.append(finding("duplicate", [exact[key], row],
                               f"Row {row} repeats row {exact[key]} exactly: the pair counts twice in every epoch "
                               "and can land on both sides of a held-out split. Drop the copy."))
        elif (prompt, chosen, rejected) in near:
            first = near[(prompt, chosen, rejected)]
            out.append(finding("near_duplicate", [first, row],
                               f"Row {row} is row {first} again with other whitespace, case or punctuation: it "
                               "weighs twice as much as the other pairs. Drop the copy."))
        swapped = by_answers.get((prompt, rejected, chosen))
        if swapped is not None:
            out.append(finding("conflict", [swapped, row],
                               f"Rows {swapped} and {row} hold the same prompt with the answers the other way "
                               "round: each undoes what the other teaches. Check which label is right and drop "
                               "the other (or both)."))
        exact.setdefault(key, row)
        near.setdefault((prompt, chosen, rejected), row)
        by_answers.setdefault((prompt, chosen, rejected), row)
    return out


def eval_overlap(train, held_out, held_out_name: str) -> list[dict]:
    """One finding per held-out prompt that training also sees; rows are the training rows."""
    held: dict[str, int] = {}
    for row, pair in zip(_rows(held_out), held_out.pairs):
        held.setdefault(prompt_key(pair), row)
    hits: dict[str, list[int]] = {}
    for row, pair in zip(_rows(train), train.pairs):
        key = prompt_key(pair)
        if key in held:
            hits.setdefault(key, []).append(row)
    return [finding("eval_overlap", rows,
                    f"The prompt of training {_rows_text(rows)} is also held-out row {held[key]} of {held_out_name}: "
                    "the held-out accuracy on it measures memory, not the preference, and comes out too high. "
                    "Drop it from training (or from the held-out data).")
            for key, rows in hits.items()]


def length_bias(data) -> list[dict]:
    """`length_bias` when chosen is shorter (or longer) than rejected in most pairs, with the mean gap in words."""
    n = len(data.pairs)
    if n < BIAS_MIN_PAIRS:
        return []
    rows = _rows(data)
    gaps = [len(_answer(p, "chosen").split()) - len(_answer(p, "rejected").split()) for p in data.pairs]
    shorter = [r for r, g in zip(rows, gaps) if g < 0]
    longer = [r for r, g in zip(rows, gaps) if g > 0]
    mean = sum(gaps) / n
    if len(shorter) / n >= BIAS_SHARE:
        return [finding("length_bias", shorter,
                        f"In {len(shorter)} of {n} pairs ({len(shorter) / n:.0%}) the chosen answer is shorter than "
                        f"the rejected one, by {abs(mean):.1f} words on average: the model will learn to answer "
                        "briefly. If brevity is not the preference, length-match the pairs or set ld_alpha.")]
    if len(longer) / n >= BIAS_SHARE:
        return [finding("length_bias", longer,
                        f"In {len(longer)} of {n} pairs ({len(longer) / n:.0%}) the chosen answer is longer than "
                        f"the rejected one, by {mean:.1f} words on average: the model will learn to answer at "
                        "length. If length is not the preference, length-match the pairs or set ld_alpha.")]
    return []


def small_eval(held_out, where: str) -> list[dict]:
    """`small_eval` when fewer than SMALL_EVAL pairs are held out; `where` says which pairs they are."""
    n = len(held_out.pairs)
    if n >= SMALL_EVAL:
        return []
    if n == 0:
        return [finding("small_eval", [], f"No pairs are held out ({where}): nothing measures whether the run "
                                          f"learned the preference. Hold out at least {SMALL_EVAL} pairs.")]
    low, high = wilson(n, n)
    return [finding("small_eval", _rows(held_out),
                    f"Only {n} held-out pair{'s' if n != 1 else ''} ({where}): one pair moves the accuracy by "
                    f"{100 / n:.0f} points, and even a perfect score has a 95% interval of {low:.2f}–{high:.2f}. "
                    f"Give at least {SMALL_EVAL} held-out pairs (eval_data, or a larger eval fraction); until "
                    "then read the accuracy with its interval.")]


# --------------------------------------------------------------------------- truncation (needs the tokenizer)


def truncated(data, tokenizer, max_length: int) -> list[dict]:
    """Pairs whose prompt + answer exceed max_length as TRL cuts them (keep_start): the tokens each side loses,
    and pairs whose cut leaves chosen and rejected the same (no signal left)."""
    pairs, rows = data.pairs, _rows(data)
    if not pairs:
        return []
    chosen = tokenizer([_answer(p, "chosen") for p in pairs], add_special_tokens=False)["input_ids"]
    rejected = tokenizer([_answer(p, "rejected") for p in pairs], add_special_tokens=False)["input_ids"]
    asked = tokenizer(["\n".join(m["content"] for m in p["prompt"]) for p in pairs], add_special_tokens=False)["input_ids"]
    overhead = _template_overhead(tokenizer)
    out = []
    for row, pair, q, c, r in zip(rows, pairs, asked, chosen, rejected):
        # A batched count without the template first: only pairs near the limit are rendered one by one.
        if len(q) + max(len(c), len(r)) + overhead + 8 * len(pair["prompt"]) <= max_length:
            continue
        # The exact count, as TRL's tokenize step makes it: the answer's ids follow the prompt's in one render.
        prompt_ids = chat_ids(tokenizer, pair["prompt"], add_generation_prompt=True)
        sides = [chat_ids(tokenizer, pair["prompt"] + pair[part])[len(prompt_ids):] for part in ("chosen", "rejected")]
        room = max(max_length - len(prompt_ids), 0)
        lost = [max(len(ids) - room, 0) for ids in sides]
        if not any(lost):
            continue
        total = len(prompt_ids) + max(len(ids) for ids in sides)
        same = sides[0][:room] == sides[1][:room]
        tail = (" After the cut chosen and rejected are identical: the pair teaches nothing. Raise max_length, "
                "shorten the prompt or drop the pair." if same else
                " The cut parts never reach the model; if the difference between the answers lies there, raise "
                "max_length or shorten the pair.")
        out.append(finding("truncated", [row],
                           f"Row {row} is {total} tokens, over max_length {max_length}: chosen loses {lost[0]} "
                           f"tokens and rejected {lost[1]}.{tail}"))
    return out


def _template_overhead(tokenizer) -> int:
    """Tokens the chat template adds around a prompt and an answer (role markers, end of turn), with room to spare."""
    probe = [{"role": "user", "content": "x"}]
    full = chat_ids(tokenizer, probe + [{"role": "assistant", "content": "y"}])
    return len(full) + 8


# --------------------------------------------------------------------------- all of them


def find_all(data, held_out=None, held_out_name: str = "the held-out data", train=None, eval_where: str = "",
             tokenizer=None, max_length: int | None = None) -> list[dict]:
    """Every model-free finding of `data` (plus `truncated` with a tokenizer), in KINDS order.

    `held_out`: the held-out pairs (an eval file, or the split the run makes); `train`: the pairs that
    train (default `data`; with a split, its training side); `eval_where`: which held-out pairs, in words.
    """
    out = repeats(data)
    if held_out is not None:
        out += eval_overlap(train if train is not None else data, held_out, held_out_name)
    if tokenizer is not None and max_length:
        out += truncated(data, tokenizer, max_length)
    out += length_bias(data)
    if held_out is not None:
        out += small_eval(held_out, eval_where or held_out_name)
    return sorted(out, key=lambda f: KINDS.index(f["kind"]))  # stable: each kind keeps its row order


def counts(findings: list[dict]) -> dict[str, int]:
    return {kind: n for kind in KINDS if (n := sum(f["kind"] == kind for f in findings))}


def rows_to_drop(findings: list[dict], kinds, confirmed: set[int] | None = None) -> set[int]:
    """The rows a cleaned copy leaves out for the ticked kinds (suspect rows only where the user confirmed them)."""
    drop: set[int] = set()
    for f in findings:
        if f["kind"] not in kinds or f["kind"] not in DROPPABLE:
            continue
        if f["kind"] in ("duplicate", "near_duplicate"):
            drop.update(f["rows"][1:])
        elif f["kind"] == "suspect_label":
            drop.update(r for r in f["rows"] if confirmed is None or r in confirmed)
        else:
            drop.update(f["rows"])
    return drop


# --------------------------------------------------------------------------- accuracy with its interval


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a share (95% by default): honest at 0/n and n/n, where the plain one is not."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_text(accuracy: float | None, n: int | None) -> str:
    """An accuracy as a user should read it: with its 95% interval when fewer than SMALL_EVAL pairs measured it."""
    if accuracy is None:
        return ""
    if not n or n >= SMALL_EVAL:
        return f"{accuracy:.2f}"
    low, high = wilson(round(accuracy * n), n)
    return f"{accuracy:.2f} (95% {low:.2f}–{high:.2f}, {n} pairs)"
