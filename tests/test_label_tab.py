"""The Label tab on its own small app: blind A/B through the API (label, undo, reload, resume), then in Chromium
with the keyboard. No model is loaded: the pool holds hand-written answers."""

import json

import gradio as gr
import pytest
from gradio_client import Client

from studio.label import next_pair
from studio.pools import create_pool, get_pool, human
from studio.ui.label_tab import LabelTab

from helpers import free_port

ANSWERS = [("Nine minutes.", "Boiling an egg is a journey that starts with choosing the right pot and water."),
           ("Lisbon.", "Portugal's capital, a city of seven hills and trams, is Lisbon."),
           ("Water it monthly.", "Cacti are remarkable desert plants that need surprisingly careful attention."),
           ("Yes.", "It depends on many considerations that are worth weighing carefully.")]


@pytest.fixture(scope="module")
def label_app(module_home):
    pool = create_pool("generate", "ui", models=[{"name": "SFT baseline (embedded)", "model": "embedded"}],
                       base_model="embedded", round=1, seed=0)
    for n, (short, long) in enumerate(ANSWERS):
        pool.add_candidate([{"role": "user", "content": f"Question {n}?"}],
                           [{"text": t, "name": "SFT baseline (embedded)"} for t in (short, long)])
    pool.update(state="done", done=len(ANSWERS))
    with gr.Blocks() as demo:
        with gr.Tabs():
            with gr.Tab("Other"):
                gr.Markdown("another tab")
            LabelTab()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
    try:
        yield url, pool
    finally:
        demo.close()


def view(client, pool_id, name):
    _, _, progress, prompt, a, b, _ = client.predict(pool_id, name, {}, api_name="/label_view")
    return progress, prompt, a, b


def test_blind_labels_undo_and_a_reload_resumes_where_it_stopped(label_app):
    url, pool = label_app
    client = Client(url, verbose=False)
    progress, prompt, a, b = view(client, pool.id, "api user")
    assert "0 of 4" in progress and prompt.endswith("Question 0?") and {a, b} == set(ANSWERS[0])
    assert "embedded" not in a + b + prompt  # blind

    # "A is better": saved at once, as the answer shown as A; the next pair shows.
    progress, prompt, *_ = client.predict(pool.id, "api user", api_name="/label_a")
    assert "1 of 4" in progress and prompt.endswith("Question 1?")
    me = human("api user")
    decided = get_pool(pool.id).decisions(me)
    first = pool.pairs()[0]
    assert decided[(first.id, me)].winner == first.a

    client.predict(pool.id, "api user", api_name="/label_b")
    progress, prompt, *_ = client.predict(pool.id, "api user", api_name="/label_undo")
    assert "1 of 4" in progress and prompt.endswith("Question 1?")  # the undone pair is shown again
    client.predict(pool.id, "api user", api_name="/label_tie")

    # A reload (a new session, nothing kept in the page) resumes at the next pair, from disk.
    other = Client(url, verbose=False)
    progress, prompt, *_ = view(other, pool.id, "api user")
    assert "2 of 4" in progress and prompt.endswith("Question 2?")
    other.predict(pool.id, "api user", api_name="/label_both_bad")
    progress, prompt, *_ = client.predict(pool.id, "api user", api_name="/label_skip")  # the first browser goes on
    assert "2 of 4" in progress and "1 skipped" in progress and prompt.endswith("Question 3?")  # a skip labels nothing

    events = [json.loads(line) for line in (pool.path / "labels.jsonl").read_text().splitlines()]
    assert [(e["event"], e.get("shown")) for e in events] == [
        ("label", "A"), ("label", "B"), ("undo", None), ("label", "tie"), ("label", "both_bad"), ("label", "skip")]
    assert {e["labeller"] for e in events} == {me}

    # The decisions become a preference file (ties, both bad and skips make no row).
    status = client.predict(pool.id, "(everyone)", api_name="/label_export")
    assert "Wrote **1** pairs" in status
    row = json.loads((pool.path / "preferences.jsonl").read_text())
    assert row["labeller"] == me and row["chosen"] == ANSWERS[0][first.a] and row["rejected"] == ANSWERS[0][first.b]


def test_a_rubric_labels_the_pool_with_a_reason_per_pair(label_app):
    url, pool = label_app
    client = Client(url, verbose=False)
    rubric = "name: brief\nrules:\n  - type: shorter\n    min_difference: 3\n"
    table, *_ = client.predict(pool.id, "api user", rubric, api_name="/label_rubric")
    assert table["headers"] == ["prompt", "answer 1", "answer 2", "verdict", "reason"]
    assert [row[3] for row in table["data"]] == ["answer 1"] * 4
    assert all("words" in row[4] for row in table["data"])
    before = len(get_pool(pool.id).events())
    client.predict(pool.id, "api user", "rules:\n  - type: shortest\n", api_name="/label_rubric")
    assert len(get_pool(pool.id).events()) == before  # a bad rubric is a warning and records nothing
    assert len(get_pool(pool.id).decisions("rubric:brief")) == 4


@pytest.mark.browser
def test_keyboard_labelling_in_chromium_survives_a_reload(label_app, open_page):
    from playwright.sync_api import expect

    url, pool = label_app
    me = human("keys")
    page = open_page(1300, 900, timeout_ms=30_000)
    page.goto(url)
    page.get_by_role("tab", name="Grow pairs").click()
    progress = page.locator("#label-progress")
    expect(progress).to_contain_text("of 4")
    name = page.locator("#label-name textarea, #label-name input").first
    name.fill("keys")
    name.press("1")  # typed into the name box: a character of the name, not a label
    name.fill("keys")
    page.locator("#label-prompt").click()  # leave the box (its blur shows this person's pairs)
    expect(progress).to_contain_text("0 of 4")
    expect(progress).to_contain_text("human:keys")
    shown = page.locator("#label-a").inner_text()

    page.keyboard.press("1")
    expect(progress).to_contain_text("1 of 4")
    first = pool.pairs()[0]
    assert get_pool(pool.id).decisions(me)[(first.id, me)].winner == first.a
    assert pool.candidates()[0]["answers"][first.a]["text"] in shown

    page.keyboard.press("z")
    expect(progress).to_contain_text("0 of 4")
    expect(page.locator("#label-prompt")).to_contain_text("Question 0?")
    for key, count in (("2", 1), ("3", 2), ("0", 3)):
        page.keyboard.press(key)
        expect(progress).to_contain_text(f"{count} of 4")

    # A reload: the name comes back from the browser, the counter and the next pair from the pool.
    page.reload()
    page.get_by_role("tab", name="Grow pairs").click()
    expect(progress).to_contain_text("3 of 4")
    expect(page.locator("#label-prompt")).to_contain_text("Question 3?")
    assert next_pair(pool, me)["prompt"] == "Question 3?"
    outcomes = [d.outcome for d in get_pool(pool.id).decisions(me).values()]
    assert sorted(outcomes) == ["both_bad", "tie", "win"]
