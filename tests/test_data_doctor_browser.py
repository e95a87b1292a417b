"""The data doctor in a real browser: an upload with planted defects shows its findings by kind, the Train tab's
caption says which held-out pairs the run will use, and a cleaned copy is written, checked and selected."""

import json

import pytest

expect = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -r requirements-dev.txt").expect

TOPICS = ["tea", "bread", "git", "python", "running", "sleep", "rain", "maps", "music", "paint"]


def planted_rows() -> list[dict]:
    rows = [{"prompt": f"Tell me one thing about {t}.", "chosen": f"I like {t}. It is simple.",
             "rejected": f"It is important to note that {t} is a multifaceted topic."} for t in TOPICS]
    rows.append(dict(rows[2]))  # row 11: row 3 again
    rows.append({"prompt": rows[5]["prompt"], "chosen": rows[5]["rejected"], "rejected": rows[5]["chosen"]})  # row 12
    return rows


@pytest.mark.browser
def test_the_data_tab_shows_the_findings_and_writes_a_cleaned_copy(launched_app, open_page, tmp_path):
    url, home = launched_app
    source = tmp_path / "planted.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in planted_rows()))
    page = open_page(1400, 1000)
    page.goto(url)

    page.locator("#data-upload input[type=file]").set_input_files(str(source))
    findings = page.locator("#data-findings")
    expect(findings).to_contain_text("Findings: 4", timeout=180_000)
    for words in ("Duplicates (duplicate) · 1", "Row 11 repeats row 3 exactly", "Conflicts (conflict) · 1",
                  "Rows 6 and 12 hold the same prompt", "Length bias (length_bias) · 1", "answer briefly",
                  "Too few held-out pairs (small_eval) · 1", "Only 1 held-out pair"):
        expect(findings).to_contain_text(words)
    uploads = sorted((home / "uploads").iterdir())
    original = next(p for p in uploads if p.read_text() == source.read_text())

    # The Train tab's caption names the pairs the run will hold out: 5% of the upload, 1 pair, with the warning.
    page.get_by_role("tab", name="Train").click()
    caption = page.locator("#eval-source")
    expect(caption).to_contain_text("5% of the training data (seed 0)", timeout=30_000)
    expect(caption).to_contain_text("1 pair.")
    expect(caption).to_contain_text("Fewer than 20")
    page.get_by_role("tab", name="Data").click()

    # Tick duplicates and conflicts, write the copy: 12 rows minus row 11 and rows 6 and 12.
    kinds = page.locator("#data-drop-kinds")
    expect(kinds).to_contain_text("duplicates (the copies) · 1")
    expect(kinds).to_contain_text("conflicts (both rows) · 1")
    kinds.locator("input[name=duplicate]").check()
    kinds.locator("input[name=conflict]").check()
    page.locator("#data-clean").click()
    summary = page.locator("#data-summary")
    expect(summary).to_contain_text("-cleaned-", timeout=120_000)
    expect(summary).to_contain_text("This is now the training data")
    expect(findings).not_to_contain_text("Duplicates", timeout=60_000)
    expect(findings).not_to_contain_text("Conflicts")
    cleaned = [p for p in (home / "uploads").iterdir() if "-cleaned-" in p.name]
    assert len(cleaned) == 1 and cleaned[0].parent == original.parent
    assert original.read_text() == source.read_text()  # the original is never changed
    kept = [json.loads(line) for line in cleaned[0].read_text().splitlines()]
    assert [r["prompt"][-1]["content"] for r in kept] == [f"Tell me one thing about {t}." for t in TOPICS if t != "sleep"]
    page.get_by_role("tab", name="Train").click()
    expect(page.locator("#data input, #data textarea").first).to_have_value(str(cleaned[0]), timeout=30_000)
