"""Thumbs up / down in the Grow pairs tab: one answer at a time, saved at once, resumable, by API and by key in
Chromium; the verdicts become KTO's unpaired file, which the next round trains on with objective kto.
No model is loaded: the pool holds hand-written answers."""

import gradio as gr
import pytest
from gradio_client import Client

from studio.config import RunConfig
from studio.data import load_preferences
from studio.pools import get_pool, human
from studio.rounds import next_round_config
from studio.thumbs import next_answer, progress, thumb, to_kto, undo_thumb, verdicts
from studio.training_data import check_sources
from studio.ui.label_tab import LabelTab

from helpers import answer_pool, free_port

ANSWERS = [("Nine minutes.", "Boiling an egg is a journey that starts with choosing the right pot and water."),
           ("Lisbon.", "Portugal's capital, a city of seven hills and trams, is Lisbon.")]


def make_pool():
    return answer_pool("thumbs", ANSWERS)


def test_thumbs_are_saved_undone_and_become_a_kto_file_the_next_round_trains_with_kto(studio_home, tmp_path):
    pool = make_pool()
    me = "human:ann"
    first = next_answer(pool, me)
    assert first == {"answer": "c00000#0", "prompt": "Question 0?", "text": "Nine minutes."}
    thumb(pool, first["answer"], "up", me)
    assert next_answer(pool, me)["answer"] == "c00000#1"
    thumb(pool, "c00000#1", "down", me)
    thumb(pool, "c00001#0", "skip", me)
    assert undo_thumb(pool, me) == "c00001#0"  # the latest decision comes back
    thumb(pool, "c00001#0", "up", me)
    thumb(pool, "c00001#1", "skip", me)
    assert progress(pool, me) == {"total": 4, "up": 2, "down": 1, "skip": 1, "judged": 3, "left": 1}
    assert next_answer(pool, me)["answer"] == "c00001#1"  # skipped ones come back once the rest are done
    with pytest.raises(Exception, match="no answer 'c9#9'"):
        thumb(pool, "c9#9", "up", me)  # an id from a browser names an answer of this pool, or nothing is written
    with pytest.raises(Exception, match="Unknown verdict"):
        thumb(pool, "c00000#0", "maybe", me)

    path, counts = to_kto(pool)
    assert counts == {"up": 2, "down": 1} and path == pool.path / "thumbs.kto.jsonl"
    data = load_preferences(path)
    assert data.unpaired and data.report.labels == {"up": 2, "down": 1}
    assert {(i["completion"][0]["content"], i["label"]) for i in data.pairs} == {
        ("Nine minutes.", True), (ANSWERS[0][1], False), ("Lisbon.", True)}

    base = RunConfig(data=str(tmp_path / "unused.jsonl"), objective="dpo", per_device_train_batch_size=1)
    cfg = next_round_config(pool, base, feedback="thumbs")
    assert cfg.objective == "kto" and cfg.data == str(path) and cfg.round == 1
    assert cfg.per_device_train_batch_size == 2  # KTO's KL estimate needs two answers a batch
    check_sources(cfg)  # the file is read as KTO's layout and accepted for objective kto


@pytest.fixture(scope="module")
def thumbs_app(module_home):
    pool = make_pool()
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


def test_thumbs_through_the_api_resume_after_a_reload(thumbs_app):
    url, pool = thumbs_app
    client = Client(url, verbose=False)
    progress_md, prompt, text = client.predict(pool.id, "api", api_name="/thumbs_view")
    assert "0 of 4" in progress_md and prompt.endswith("Question 0?") and text == "Nine minutes."
    assert "embedded" not in text + prompt  # blind
    progress_md, prompt, text = client.predict(pool.id, "api", api_name="/thumbs_up")
    assert "1 of 4" in progress_md and text == ANSWERS[0][1]
    client.predict(pool.id, "api", api_name="/thumbs_down")
    # A fresh client (a reload, another browser): the next answer comes from the pool, not the page.
    progress_md, prompt, text = Client(url, verbose=False).predict(pool.id, "api", api_name="/thumbs_view")
    assert "2 of 4" in progress_md and text == "Lisbon."
    status = client.predict(pool.id, api_name="/thumbs_export")
    assert "Wrote **2** answers (1 👍, 1 👎)" in status


@pytest.mark.browser
def test_thumbs_by_key_in_chromium_survive_a_reload(thumbs_app, open_page):
    from playwright.sync_api import expect

    url, pool = thumbs_app
    me = human("keys")
    page = open_page(1300, 900, timeout_ms=30_000)
    page.goto(url)
    page.get_by_role("tab", name="Grow pairs").click()
    page.locator("#thumbs-box").get_by_text("thumbs up / down, one answer at a time").click()
    name = page.locator("#label-name textarea, #label-name input").first
    name.fill("keys")
    name.press("u")  # typed into the name box: a letter of the name, not a thumb
    name.fill("keys")
    page.locator("#thumb-prompt").click()  # leave the box (its blur shows this person's answers)
    progress_md = page.locator("#thumb-progress")
    expect(progress_md).to_contain_text("0 of 4")
    expect(progress_md).to_contain_text("human:keys")
    expect(page.locator("#thumb-answer")).to_contain_text("Nine minutes.")

    page.keyboard.press("u")
    expect(progress_md).to_contain_text("1 of 4")
    page.keyboard.press("b")  # undo
    expect(progress_md).to_contain_text("0 of 4")
    for key, count in (("u", 1), ("d", 2), ("x", 2)):
        page.keyboard.press(key)
        expect(progress_md).to_contain_text(f"{count} of 4")
    page.reload()
    page.get_by_role("tab", name="Grow pairs").click()
    page.locator("#thumbs-box").get_by_text("thumbs up / down, one answer at a time").click()
    expect(progress_md).to_contain_text("2 of 4")
    expect(page.locator("#thumb-answer")).to_contain_text(ANSWERS[1][1])
    mine = {a: e["verdict"] for (a, _), e in verdicts(get_pool(pool.id), me).items()}
    assert mine == {"c00000#0": "up", "c00000#1": "down", "c00001#0": "skip"}
