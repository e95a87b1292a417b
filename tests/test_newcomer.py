"""Issue 23's repros in Chromium: no lost chat message, no phantom control, every export
downloadable from the page, the keyboard and an axe-core scan of every tab at desktop and phone width. (Resume
said at once, with the Train tab following: in test_browser's phase test, which already stops and resumes a run.)

Real runs on the embedded SmolLM2-135M (the session's shared 6-step run); real exports; axe-core from npm
(`bash setup.sh --dev` installs it into .npm/). Skipped only when playwright, chromium or axe-core is missing.
"""

import hashlib
import re
import time
import warnings
from pathlib import Path
from urllib.parse import unquote

import pytest

from studio.export import export_run
from studio.runs import Run

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -r requirements-dev.txt")
expect, PlaywrightTimeout = sync_api.expect, sync_api.TimeoutError

pytestmark = [pytest.mark.browser, pytest.mark.slow]

AXE = Path(__file__).resolve().parent.parent / ".npm" / "node_modules" / "axe-core" / "axe.min.js"
TABS = ("Data", "Train", "Chat", "Runs", "Compare", "Grow pairs")
DESKTOP, PHONE = (1366, 900), (390, 844)


@pytest.fixture(scope="module")
def app_url(launched_app):
    return launched_app


@pytest.fixture(scope="module")
def trained(app_url, finished_run) -> Run:
    """A finished run in the app's STUDIO_HOME: the session's shared run (6 steps), copied there."""
    return finished_run


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _once(texts: list[str]) -> list[str]:
    """One entry a message: Gradio's message element and its bubble both match the selector."""
    return [t.strip() for i, t in enumerate(texts) if i == 0 or texts[i - 1].strip() != t.strip()]


def bot_texts(page, pane: str) -> list[str]:
    return _once(page.locator(f"#{pane} .message.bot, #{pane} [data-testid='bot']").all_inner_texts())


def user_texts(page, pane: str) -> list[str]:
    return _once(page.locator(f"#{pane} .message.user, #{pane} [data-testid='user']").all_inner_texts())


# --- chat -----------------------------------------------------------------------------------------


def test_two_quick_messages_are_both_answered_and_the_cut_mark_reads_as_text(app_url, trained, open_page):
    url, _ = app_url
    page = open_page(*DESKTOP)
    page.goto(url)
    open_tab(page, "Chat")
    expect(page.locator("#chat-run input")).to_have_value(re.compile(trained.id), timeout=30_000)
    page.get_by_text("Generation settings").click()
    box = page.locator("#chat-max-new-tokens input[type=number]")
    box.fill("16")
    box.press("Tab")
    prompt = page.locator("#chat-input textarea")

    # An empty prompt says so, and sends nothing.
    page.locator("#chat-send").click()
    expect(page.locator("#chat-status")).to_contain_text("the box is empty", timeout=10_000)

    # Two messages within a second: the second waits in the queue and is answered next; neither vanishes.
    prompt.fill("Tell me one thing about tea.")
    prompt.press("Enter")
    expect(prompt).to_have_value("", timeout=5_000)  # the box is free for the next message at once
    page.wait_for_timeout(300)
    prompt.fill("And one thing about bread?")
    prompt.press("Enter")
    page.wait_for_function(
        r"""() => ['chat-baseline', 'chat-tuned'].every(id => {
             const bots = [...document.querySelectorAll(`#${id} [data-testid='bot']`)].map(b => b.innerText.trim())
               .filter((t, i, a) => i === 0 || a[i - 1] !== t);
             return bots.length >= 2 && bots.every(t => t.length > 1 && t !== '…') && /cut at|\./.test(bots[1]);
           }) && /Answered/.test(document.querySelector('#chat-status').innerText)""",
        timeout=600_000, polling=250)
    for pane in ("chat-baseline", "chat-tuned"):
        users = user_texts(page, pane)
        assert [u.strip() for u in users] == ["Tell me one thing about tea.", "And one thing about bread?"], users
        assert len(bot_texts(page, pane)) == 2
    # 16 tokens cut both answers: the mark is italic text, never inside a code block.
    mark = page.locator("#chat-tuned em", has_text="cut at 16 tokens").last
    expect(mark).to_be_visible()
    assert page.locator("#chat-tuned pre", has_text="cut at").count() == 0
    expect(page.locator("#chat-status")).to_contain_text("prompt tokens")


def test_an_over_long_prompt_is_counted_and_refused_before_any_compute(app_url, trained, open_page):
    url, _ = app_url
    page = open_page(*DESKTOP)
    page.goto(url)
    open_tab(page, "Chat")
    expect(page.locator("#chat-run input")).to_have_value(re.compile(trained.id), timeout=30_000)
    prompt = page.locator("#chat-input textarea")
    prompt.fill("Tell me about tea.")
    expect(page.locator("#chat-budget")).to_contain_text("tokens of the model's 8,192-token context", timeout=30_000)
    long_text = " ".join(["tea"] * 9000)  # about 9,000 tokens: more than SmolLM2's 8,192
    prompt.fill(long_text)
    expect(page.locator("#chat-budget")).to_contain_text("too long", timeout=30_000)
    t0 = time.time()
    page.locator("#chat-send").click()
    expect(page.locator("#chat-status")).to_contain_text("Nothing was generated", timeout=30_000)
    assert time.time() - t0 < 15  # refused from the token count, not after minutes at "Answering…"
    expect(page.locator("#chat-status")).to_contain_text("8,192")
    assert not bot_texts(page, "chat-tuned")  # no answer was started


# --- controls -------------------------------------------------------------------------------------

# A disabled control must have a purpose the page states: Stop while nothing runs, Resume with its reason beside it.
PURPOSEFUL = {"stop-btn", "winrate-stop", "gen-stop", "judge-stop", "round-stop", "sweep-stop", "runs-resume"}
DISABLED_JS = """() => [...document.querySelectorAll('button, input, textarea, select, [role=button]')]
  .filter(e => e.offsetParent !== null && (e.disabled || e.getAttribute('aria-disabled') === 'true'))
  .map(e => ({id: (e.closest('[id]') || {}).id || '', text: (e.innerText || e.value || '').trim()}))"""


def test_no_disabled_control_without_a_purpose(app_url, trained, open_page):
    url, _ = app_url
    for size in (DESKTOP, PHONE):
        page = open_page(*size)
        page.goto(url)
        for tab in TABS:
            open_tab(page, tab)
            page.wait_for_timeout(800)
            for control in page.evaluate(DISABLED_JS):
                assert control["text"] != "Run", (tab, size, control)  # the phantom button of issue 23
                assert control["id"] in PURPOSEFUL or "stop" in control["id"], (tab, size, control)
        open_tab(page, "Runs")
        if page.locator("#runs-resume").is_disabled():
            expect(page.locator("#runs-resume-note")).not_to_be_empty()  # a greyed Resume says why


# --- downloads ------------------------------------------------------------------------------------


def download(page, link, what: str, seen: list, timeout_ms: int = 30_000):
    """Click a download link; a second click when the first gave no download event (seen 1 time in 16 runs on
    the 2-core VM, cause not found: the link was in place and no request failed). The miss is reported as a
    warning with what the page saw, and a link that does not download on two clicks fails the test."""
    for attempt in (1, 2):
        seen.clear()
        try:
            with page.expect_download(timeout=timeout_ms) as info:
                link.click()
            return info
        except PlaywrightTimeout as error:
            if attempt == 2:
                raise AssertionError(f"no download of {what} on two clicks; the page saw {seen}") from error
            warnings.warn(f"no download of {what} on the first click; the page saw {seen}; clicking again")


def test_every_export_format_downloads_from_the_runs_tab(app_url, trained, open_page, tmp_path):
    url, _ = app_url
    records = {"adapter": export_run(trained, "adapter"), "merged": export_run(trained, "merged"),
               "gguf-f16": export_run(trained, "gguf", quant="f16"),
               "gguf-q8_0": export_run(trained, "gguf", quant="q8_0")}
    page = open_page(*DESKTOP, timeout_ms=120_000, accept_downloads=True)
    # What the page did around a click that gave no download, for the failure message.
    seen = []
    page.on("popup", lambda popup: seen.append(f"popup {popup.url}"))
    page.on("requestfailed", lambda r: seen.append(f"failed {r.url} {r.failure}"))
    page.on("response", lambda r: "file=" in r.url and seen.append(f"{r.status} {r.url[-60:]}"))
    page.on("console", lambda m: m.type == "error" and seen.append(f"console {m.text[:200]}"))
    page.goto(url)
    open_tab(page, "Runs")
    page.locator("#runs-selected input").click()
    page.get_by_role("option", name=trained.id).click()
    page.get_by_text("Export the selected run").click()
    for key, elem in (("adapter", "runs-download-adapter"), ("merged", "runs-download-merged"),
                      ("gguf-f16", "runs-download-gguf-f16"), ("gguf-q8_0", "runs-download-gguf-q8_0")):
        record = records[key]
        block = page.locator(f"#{elem}")
        expect(block).to_be_visible(timeout=30_000)
        for entry in record["files"]:
            row = block.get_by_role("row", name=re.compile(re.escape(entry["name"]))).first  # "README .md" in cells
            expect(row).to_be_visible()
            mb = entry["bytes"] / 1e6
            # Gradio prints each file's size beside its link.
            assert re.search(r"\d", row.inner_text()), row.inner_text()
            # Linked where it lies in the exports folder, not hashed and copied into Gradio's cache on every update.
            href = unquote(row.get_by_role("link").first.get_attribute("href"))
            assert href.endswith(str(Path(record["path"]).resolve() / entry["name"])), href
            if mb > 50:
                continue  # the big weight files: their link is there; one of them is downloaded below
            info = download(page, row.get_by_role("link").first, f"{key}: {entry['name']} ({href})", seen)
            saved = tmp_path / f"{key}-{entry['name']}"
            info.value.save_as(saved)
            expected = Path(record["path"]) / entry["name"]
            assert hashlib.sha256(saved.read_bytes()).hexdigest() == hashlib.sha256(expected.read_bytes()).hexdigest()
    # One large file end to end: the q8_0 GGUF, named after its base, objective, run and type.
    gguf = records["gguf-q8_0"]["gguf"]
    assert gguf == f"SmolLM2-135M-Instruct-dpo-{trained.id}-q8_0.gguf"
    link = page.locator("#runs-download-gguf-q8_0").get_by_role("row", name=re.compile(re.escape(gguf))).first \
        .get_by_role("link").first
    info = download(page, link, gguf, seen, timeout_ms=120_000)
    saved = tmp_path / gguf
    info.value.save_as(saved)
    assert saved.stat().st_size == (Path(records["gguf-q8_0"]["path"]) / gguf).stat().st_size
    assert info.value.suggested_filename == gguf


# --- keyboard and axe -----------------------------------------------------------------------------


def test_dropdowns_open_on_enter_not_on_focus_and_focus_shows(app_url, open_page):
    url, _ = app_url
    page = open_page(*DESKTOP)
    page.goto(url)
    open_tab(page, "Train")
    page.get_by_role("tab", name="Train").focus()
    preset = page.locator("#preset input")
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.closest('#preset') !== null"):
            break
    assert page.evaluate("() => document.activeElement.closest('#preset') !== null")
    assert preset.get_attribute("aria-expanded") == "false"  # Tab landed on it: still closed
    assert page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle") != "none"
    page.keyboard.press("Enter")
    expect(preset).to_have_attribute("aria-expanded", "true")
    page.keyboard.press("Tab")  # leaving an open list closes it, and the focus goes on, not to the page body
    expect(preset).to_have_attribute("aria-expanded", "false")
    assert page.evaluate("() => document.activeElement.id") == "start-btn" or \
        page.evaluate("() => document.activeElement.closest('#start-btn') !== null")
    page.keyboard.press("Shift+Tab")
    page.keyboard.press(" ")
    expect(preset).to_have_attribute("aria-expanded", "true")
    page.keyboard.press("Escape")
    # A number box shows its focus ring; a chip's remove button is named after its chip.
    page.locator("#lora-r input[type=number]").focus()
    assert page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle") == "solid"
    expect(page.get_by_role("button", name="Remove q_proj")).to_have_count(1)
    assert page.get_by_role("button", name=re.compile(r"^Remove \d+$")).count() == 0


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_every_tab_passes_axe_with_no_serious_or_critical_violation(app_url, open_page, size):
    if not AXE.is_file():
        pytest.skip(f"axe-core is not installed at {AXE}: bash setup.sh --dev (npm install --prefix .npm axe-core)")
    url, _ = app_url
    page = open_page(*size, **({"is_mobile": True, "has_touch": True} if size == PHONE else {}))
    page.goto(url)
    page.add_script_tag(path=str(AXE))
    found = {}
    for tab in TABS:
        open_tab(page, tab)
        page.wait_for_timeout(1_000)
        violations = page.evaluate("""async () => (await axe.run(document, {resultTypes: ['violations']})).violations
            .filter(v => v.impact === 'serious' || v.impact === 'critical')
            .map(v => `${v.id} (${v.impact}): ${v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(' | ')}`)""")
        if violations:
            found[tab] = violations
    assert not found, found


def test_the_page_shows_help_for_jargon_and_no_cli_commands(app_url, open_page):
    url, _ = app_url
    page = open_page(*DESKTOP)
    page.goto(url)
    for tab in TABS:
        open_tab(page, tab)
        page.wait_for_timeout(500)
        text = page.locator("body").inner_text()
        assert "python -m studio" not in text, tab
    open_tab(page, "Chat")
    label = page.locator("#chat-baseline [data-testid='block-label']").first
    expect(label).to_have_attribute("title", re.compile("SFT baseline: the model before this training"))
    open_tab(page, "Train")
    chip = page.locator("#lora-target-modules .token > span", has_text="q_proj").first
    expect(chip).to_have_attribute("title", re.compile("q_proj: "))
