"""Measures of answers as text: repetition, distinct-2, length, readability, first person, and the damage warnings.

Pure text, no torch: the rubric labeller, win rates and tables use these without loading a model.

Damage shows in the probe answers (greedy, so they change only when the weights do): the share of
word 4-grams an answer repeats from earlier in itself (a looping answer scores high), distinct-2
across a column (low = the same phrases everywhere), mean length and its ratio to the baseline's,
and the share of answers that end on their own rather than at the token limit. `damage_warnings`
speaks when held-out accuracy rose while repetition or length moved far from the baseline's: the
preference may have been learned through length or degenerate text. Next to the baseline's length
stands the chosen answers' (`chosen_mean_words`, from the held-out pairs): when the preference itself is
about length (short direct answers), a tuned length near the chosen answers' is the lesson, not damage.

Readability is the Flesch reading ease, computed here with a small vowel-group syllable counter
(no dictionary): 206.835 - 1.015 * words/sentences - 84.6 * syllables/words. Higher reads easier;
plain conversational English lands around 60-80, formal padded prose around 20-40.
"""

from __future__ import annotations

import re


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
