"""Pools, labels, rubric and win-rate arithmetic on hand-written answers: no model is loaded here."""

import json
import math
import threading

import pytest

from studio.data import load_preferences
from studio.errors import ConfigError, DataError, EvalError
from studio.label import (both_orders, label_human, label_with_rubric, load_rubric, next_pair, pair_view,
                          undo_human)
from studio.pools import create_pool, get_pool, human, list_pools, to_preferences
from studio.winrate import length_controlled, measure, summarize, wilson_interval

SHORT = "Boil it for nine minutes."
LONG = ("Boiling an egg is a wonderful culinary journey that many people enjoy. First, you will want to consider "
        "the size of the egg, the altitude, and your personal preferences before you begin.")


def make_pool(answers_per_prompt, kind="generate", models=None):
    models = models or [{"name": "SFT baseline (embedded)", "model": "embedded", "run": None, "round": 0}]
    pool = create_pool(kind, "test", models=models, base_model="embedded", round=1, seed=0)
    for n, answers in enumerate(answers_per_prompt):
        named = [{"text": t, **models[i % len(models)]} for i, t in enumerate(answers)]
        pool.add_candidate([{"role": "user", "content": f"Question {n}?"}], named)
    pool.update(state="done", done=len(answers_per_prompt))
    return pool


def test_pool_ids_are_claimed_once_even_when_created_at_the_same_moment(studio_home):
    made = []
    threads = [threading.Thread(target=lambda: made.append(create_pool("generate", "same").id)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 6
    assert {p.id for p in list_pools()} == set(made)
    with pytest.raises(DataError, match="kind"):
        create_pool("nonsense")


def test_pairs_have_a_stored_blind_order_that_every_reader_sees_the_same(studio_home):
    pool = make_pool([["a1", "a2", "a3", "a4"]] + [["x", "y"]] * 40)
    first = pool.candidates()[0]
    assert [p["id"] for p in first["pairs"]] == [f"c00000:{i}-{j}" for i in range(4) for j in range(i + 1, 4)]
    orders = [(p.a, p.b) == (p.first, p.second) for p in pool.pairs()]
    assert 0 < sum(orders) < len(orders)  # both orders occur: the A/B side is drawn, not fixed
    assert get_pool(pool.id).pairs() == pool.pairs()  # read again from disk: the same order
    view = pair_view(pool, pool.pairs()[0])
    answers = first["answers"]
    assert {view["a"], view["b"]} == {answers[0]["text"], answers[1]["text"]}
    assert "embedded" not in json.dumps(view)  # blind: no model name in what is shown


def test_human_labels_undo_skip_and_resume_from_disk(studio_home):
    pool = make_pool([[SHORT, LONG], ["one", "two"], ["three", "four"]])
    me = human("ann")
    first = next_pair(pool, me)
    assert first["pair"] == "c00000:0-1"
    label_human(pool, first["pair"], "A", me)
    decision = pool.decisions(me)[("c00000:0-1", me)]
    shown_a = pool.pairs()[0].a
    assert decision.outcome == "win" and decision.winner == shown_a  # "A" means the answer shown as A

    assert next_pair(pool, me)["pair"] == "c00001:0-1"
    label_human(pool, "c00001:0-1", "skip", me)
    assert next_pair(pool, me)["pair"] == "c00002:0-1"  # skipped pairs wait until the others are done
    label_human(pool, "c00002:0-1", "tie", me)
    assert next_pair(pool, me)["pair"] == "c00001:0-1"  # ... then come back
    assert pool.progress(me) == {"total": 3, "labelled": 2, "skipped": 1, "left": 1}

    assert undo_human(pool, me) == "c00002:0-1"  # the latest decision goes first
    assert pool.progress(me)["labelled"] == 1
    # Another labeller's work is separate, and a fresh reader (a reload) sees the same state from disk.
    label_human(pool, "c00000:0-1", "B", human("bob"))
    again = get_pool(pool.path)
    assert again.progress(me) == {"total": 3, "labelled": 1, "skipped": 1, "left": 2}
    assert next_pair(again, me)["pair"] == "c00002:0-1"
    # Nothing was lost: every click and the undo are lines in labels.jsonl.
    events = [json.loads(line) for line in (pool.path / "labels.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["label", "label", "label", "undo", "label"]
    assert events[3]["target"] == events[2]["id"] and all(e["time"] for e in events)
    with pytest.raises(DataError, match="choice"):
        label_human(pool, "c00000:0-1", "C", me)


def test_preference_file_has_provenance_and_is_read_by_data_check(studio_home):
    pool = make_pool([[SHORT, LONG], ["Paris.", "The capital, as many know, is Paris, a city of lights."], ["x1", "x2"]])
    with pytest.raises(DataError, match="no labelled pair"):
        to_preferences(pool)
    me = human("ann")
    for view in iter(lambda: next_pair(pool, me), None):
        c = pool.candidates()[int(view["pair"][1:6])]
        if view["pair"].startswith("c00002"):
            label_human(pool, view["pair"], "both_bad", me)
            continue
        shorter = "A" if len(view["a"]) < len(view["b"]) else "B"
        label_human(pool, view["pair"], shorter, me)
        assert c["prompt"] == view["prompt"]
    path, rows = to_preferences(pool)
    assert rows == 2 and path == pool.path / "preferences.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["chosen"] for r in lines] == [SHORT, "Paris."]
    assert lines[0]["labeller"] == "human:ann" and lines[0]["round"] == 1 and lines[0]["pool"] == pool.id
    assert lines[0]["chosen_model"] == lines[0]["rejected_model"] == "SFT baseline (embedded)"
    data = load_preferences(path)
    assert data.report.layout == "prompt/chosen/rejected strings" and data.report.pairs == 2 and not data.report.dropped
    assert data.pairs[0]["prompt"] == [{"role": "user", "content": "Question 0?"}]


RUBRIC = """
name: short
goal: Short answers.
rules:
  - type: must_not_match
    pattern: '(?i)as an ai'
  - type: shorter
    min_difference: 5
  - type: first_person
    min_difference: 0.5
"""


def test_rubric_decides_known_answers_by_the_first_rule_that_separates_them():
    rubric = load_rubric(RUBRIC)
    assert rubric.labeller == "rubric:short" and rubric.goal == "Short answers."
    outcome, winner, reason = rubric.decide(LONG, SHORT)
    assert (outcome, winner) == ("win", 1)
    assert "rule 2" in reason and "32 vs 5 words" in reason
    outcome, winner, reason = rubric.decide("As an AI, I cannot.", "I think nine minutes is right for this.")
    assert (outcome, winner) == ("win", 1) and "rule 1" in reason
    outcome, winner, reason = rubric.decide("As an AI, no.", "As an AI, yes.")
    assert (outcome, winner) == ("both_bad", None) and "neither" in reason
    # Same length: the shorter rule is too close, first person decides.
    outcome, winner, reason = rubric.decide("The egg takes nine minutes.", "I boil mine nine minutes.")
    assert (outcome, winner) == ("win", 1) and "rule 3" in reason and "too close" not in reason.split("rule 3")[1]
    outcome, winner, reason = rubric.decide("Nine minutes.", "Ten minutes.")
    assert (outcome, winner) == ("tie", None) and "no rule" in reason


def test_the_finished_rule_reads_whether_an_answer_was_cut_off():
    rubric = load_rubric("rules:\n  - type: finished\n  - type: shorter\n    min_difference: 3\n")
    assert rubric.decide(LONG, SHORT, finished=(True, False))[:2] == ("win", 0)  # the cut answer loses
    outcome, winner, reason = rubric.decide(LONG, SHORT, finished=(False, False))
    assert (outcome, winner) == ("both_bad", None) and "neither" in reason
    assert rubric.decide(LONG, SHORT, finished=(True, True))[:2] == ("win", 1)  # both ended: shorter decides
    outcome, _, reason = rubric.decide(LONG, SHORT)  # not known (answers not from a pool): the next rule decides
    assert outcome == "win" and "not known" in reason and "rule 2" in reason


@pytest.mark.parametrize("text, message", [
    ("rules: []", "non-empty list"),
    ("rules:\n  - type: shortest", "unknown type 'shortest'"),
    ("rules:\n  - type: must_match", "`pattern` must be"),
    ("rules:\n  - type: must_match\n    pattern: '(['", "not a valid regular expression"),
    ("rules:\n  - type: shorter\n    min_difference: -1", "min_difference must be a number"),
    ("rules:\n  - type: shorter\n    pattern: x", "unknown key(s) pattern"),
    ("rules:\n  - type: finished\n    min_difference: 1", "unknown key(s) min_difference"),
    ("name: x\nrule: []", "unknown key(s) rule"),
])
def test_bad_rubrics_name_the_rule_and_the_key(text, message):
    with pytest.raises(ConfigError) as info:
        load_rubric(text)
    assert message in str(info.value)


def test_rubric_labels_a_pool_and_records_each_reason(studio_home):
    pool = make_pool([[LONG, SHORT], ["Yes.", "No."]])
    counts = label_with_rubric(pool, load_rubric(RUBRIC))
    assert counts == {"labeller": "rubric:short", "win": 1, "tie": 1, "both_bad": 0}
    decided = pool.decisions("rubric:short")
    assert decided[("c00000:0-1", "rubric:short")].winner == 1
    assert "words" in decided[("c00000:0-1", "rubric:short")].reason
    path, rows = to_preferences(pool, "rubric:short")
    assert rows == 1 and "rule 2" in json.loads(path.read_text())["reason"]


def test_both_orders_must_agree_for_a_judge_to_pick_a_winner():
    assert both_orders(1.2, -0.4)[:2] == ("win", 0)  # A preferred as A, and still preferred when shown as B
    assert both_orders(-0.3, 2.0)[:2] == ("win", 1)
    outcome, winner, reason = both_orders(1.0, 1.5)  # always "A": position bias
    assert (outcome, winner) == ("tie", None) and "disagree" in reason
    assert both_orders(0.0, -1.0)[:2] == ("tie", None)


# --- win-rate arithmetic -----------------------------------------------------------------------


def test_wilson_interval_matches_the_textbook_values():
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)  # Wilson (1927) for 8 of 10
    low, high = wilson_interval(0, 20)
    assert low == 0 and round(high, 4) == 0.1611
    low, high = wilson_interval(15, 30)
    assert math.isclose(low + high, 1.0) and round(low, 4) == 0.3315


def test_win_rate_counts_ties_as_half_and_reports_the_table():
    # 6 wins, 2 ties, 2 losses over 10 prompts.
    scores = [1, 1, 1, 1, 1, 1, 0.5, 0.5, 0, 0]
    result = summarize(scores, [10] * 10, [10] * 10)
    assert (result["wins"], result["ties"], result["losses"], result["pairs"]) == (6, 2, 2, 10)
    assert result["win_rate"] == 0.7
    assert result["ci95"] == list(wilson_interval(7, 10))
    # No length difference at all: the length-controlled rate is the plain one (up to the tiny penalty).
    assert abs(result["lc_win_rate"] - 0.7) < 0.005
    assert result["mean_words_a"] == result["mean_words_b"] == 10
    with pytest.raises(EvalError):
        summarize([], [], [])


def test_length_control_removes_a_win_rate_that_length_alone_explains():
    # Longer answers win 80% of the time, whoever wrote them; A is longer on 10 prompts, shorter on 5.
    # Raw win rate (8 + 1) / 15 = 0.6; at equal length the fitted model says 0.5 exactly (up to the penalty).
    diffs = [20] * 10 + [-20] * 5
    scores = [1] * 8 + [0] * 2 + [1] + [0] * 4
    result = summarize(scores, [100 + d for d in diffs], [100] * 15)
    assert result["win_rate"] == 0.6 and result["mean_words_a"] > result["mean_words_b"]
    assert abs(result["lc_win_rate"] - 0.5) < 0.005 and result["length_slope"] > 1
    # With two length groups the fit is exact: sigmoid(b0 + b1 x) is the win share of each group, so
    # b0 = (logit(0.9) + logit(0.2)) / 2 when the longer side wins 9 of 10 and the shorter 1 of 5.
    scores = [1] * 9 + [0] + [1] + [0] * 4
    lc = length_controlled(scores, [100 + d for d in diffs], [100] * 15)
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    expected = 1 / (1 + math.exp(-(logit(0.9) + logit(0.2)) / 2))
    assert abs(lc["lc_win_rate"] - expected) < 0.005 and abs(expected - 0.6) < 1e-9


def test_length_control_keeps_a_win_that_length_does_not_explain():
    # A wins 8 of 10 whether longer or shorter: the length-controlled rate stays near 0.8.
    diffs = [30, -30, 20, -20, 10, -10, 25, -25, 15, -15]
    scores = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    lc = length_controlled(scores, [100 + d for d in diffs], [100] * 10)
    assert abs(lc["lc_win_rate"] - 0.8) < 0.02


def test_measure_reads_a_win_rate_pool_labelled_by_people(studio_home):
    models = [{"name": "round1", "model": "embedded", "run": "r1", "round": 1},
              {"name": "SFT baseline (embedded)", "model": "embedded", "run": None, "round": 0}]
    pool = make_pool([["short", "a much longer answer"]] * 4, kind="winrate", models=models)
    me = human("ann")
    for verdict in ("model A", "model B", "tie", "skip"):
        view = next_pair(pool, me)
        a_is_model_a = view["a"] == "short"
        choice = {"model A": "A" if a_is_model_a else "B", "model B": "B" if a_is_model_a else "A"}.get(verdict, verdict)
        label_human(pool, view["pair"], choice, me)
    result = measure(pool, me)
    assert (result["wins"], result["ties"], result["losses"], result["pairs"]) == (1, 1, 1, 3)  # skip: not counted
    assert result["model_a"] == "round1" and result["win_rate"] == 0.5
    assert get_pool(pool.id).info()["winrate"][me]["win_rate"] == 0.5
    with pytest.raises(EvalError, match="not a win-rate pool"):
        measure(make_pool([["a", "b"]]))
