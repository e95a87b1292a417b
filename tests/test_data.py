"""Tests for studio.data: readers, layout detection, row faults, tokens and the split."""

import json

import pytest

from studio.data import Columns, DataError, PreferenceSet, load_preferences


# --------------------------------------------------------------------------- helpers


def write_jsonl(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


def simple_rows(n):
    return [{"prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(n)]


def only_drop(result):
    assert len(result.report.dropped) == 1
    return result.report.dropped[0]


@pytest.fixture(scope="module")
def tiny_tokenizer():
    """Word-level tokenizer: one token per word or punctuation mark; built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<eos>", "system", "user", "assistant", ":", "hello", "world"]
    core = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<eos>")
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <eos> {% endfor %}"
        "{% if add_generation_prompt %}assistant : {% endif %}"
    )
    return tok


# --------------------------------------------------------------------------- layouts (JSONL)


def test_prompt_chosen_rejected_strings(tmp_path):
    result = load_preferences(write_jsonl(tmp_path, [{"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}]))
    assert result.report.format == "jsonl"
    assert result.report.layout == "prompt/chosen/rejected strings"
    assert result.report.columns == ["prompt", "chosen", "rejected"]
    assert (result.report.rows, result.report.pairs, result.report.dropped) == (1, 1, [])
    assert result.pairs == [{"prompt": [user("Hi?")], "chosen": [assistant("Hello!")], "rejected": [assistant("Go away.")]}]


def test_trl_conversational(tmp_path):
    row = {
        "prompt": [user("Hi"), assistant("Hello"), user("Capital of France?")],
        "chosen": [assistant("Paris.")],
        "rejected": [assistant("Lyon.")],
    }
    result = load_preferences(write_jsonl(tmp_path, [row]))
    assert result.report.layout == "conversational"
    assert result.pairs == [row]


def test_chosen_rejected_conversations_ultrafeedback_style(tmp_path):
    rows = [{
        "prompt": "Capital of France?",
        "prompt_id": "abc",
        "chosen": [user("Capital of France?"), assistant("Paris.")],
        "rejected": [user("Capital of France?"), assistant("Lyon.")],
        "messages": [user("Capital of France?"), assistant("Paris.")],
        "score_chosen": 9.0,
        "score_rejected": 2.0,
    }]
    result = load_preferences(write_jsonl(tmp_path, rows))
    assert result.report.layout == "chosen/rejected conversations"
    assert result.pairs == [{
        "prompt": [user("Capital of France?")], "chosen": [assistant("Paris.")], "rejected": [assistant("Lyon.")],
    }]


def test_chosen_rejected_conversations_without_prompt_column_multi_turn(tmp_path):
    context = [system("Be brief."), user("Hi"), assistant("Hello"), user("2+2?")]
    rows = [
        {"chosen": context + [assistant("4")], "rejected": context + [assistant("5")]},
        {"chosen": [user("a"), assistant("x")], "rejected": [user("b"), assistant("y")]},
    ]
    result = load_preferences(write_jsonl(tmp_path, rows))
    assert result.pairs == [{"prompt": context, "chosen": [assistant("4")], "rejected": [assistant("5")]}]
    assert only_drop(result)["row"] == 2
    assert "chosen and rejected differ" in only_drop(result)["reason"]


def test_implicit_prompt_human_assistant(tmp_path):
    shared = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant:"
    rows = [
        {"chosen": shared + " It is 4.", "rejected": shared + " It is 5."},
        {"chosen": "\n\nHuman: A\n\nAssistant: yes", "rejected": "\n\nHuman: B\n\nAssistant: no"},
        {"chosen": "Human: Q\n\nAssistant: short", "rejected": "Human: Q\n\nAssistant: long"},
    ]
    result = load_preferences(write_jsonl(tmp_path, rows))
    assert result.report.layout == "implicit prompt (Human/Assistant)"
    assert result.pairs[0] == {
        "prompt": [user("Hi there"), assistant("Hello!"), user("What is 2+2?")],
        "chosen": [assistant("It is 4.")],
        "rejected": [assistant("It is 5.")],
    }
    assert result.pairs[1]["prompt"] == [user("Q")]
    assert only_drop(result)["row"] == 2
    assert "differ" in only_drop(result)["reason"]


def test_implicit_prompt_final_turn_from_human_is_dropped(tmp_path):
    rows = [
        {"chosen": "\n\nHuman: Q\n\nAssistant: a", "rejected": "\n\nHuman: Q\n\nAssistant: b"},
        {"chosen": "\n\nHuman: Q\n\nAssistant: a\n\nHuman: more", "rejected": "\n\nHuman: Q\n\nAssistant: b"},
    ]
    drop = only_drop(load_preferences(write_jsonl(tmp_path, rows)))
    assert drop == {"row": 2, "reason": "chosen: last message is from 'user', expected 'assistant'"}


def test_alpaca_instruction_input(tmp_path):
    rows = [
        {"instruction": "Translate.", "input": "bonjour", "chosen": "hello", "rejected": "bye"},
        {"instruction": "Say hi.", "input": "", "chosen": "hi", "rejected": "no"},
        {"instruction": "Say yo.", "chosen": "yo", "rejected": "no"},
    ]
    result = load_preferences(write_jsonl(tmp_path, rows))
    assert result.report.layout == "instruction/input (Alpaca)"
    assert [p["prompt"] for p in result.pairs] == [[user("Translate.\n\nbonjour")], [user("Say hi.")], [user("Say yo.")]]


def test_question_column_is_a_prompt(tmp_path):
    result = load_preferences(write_jsonl(tmp_path, [{"question": "Why?", "chosen": "Because.", "rejected": "No."}]))
    assert result.pairs[0]["prompt"] == [user("Why?")]


def test_system_column(tmp_path):
    rows = [
        {"system": "Be kind.", "prompt": "Hi", "chosen": "Hello", "rejected": "Go"},
        {"system": "  ", "prompt": "Hi", "chosen": "Hello", "rejected": "Go"},
        {"system": None, "prompt": "Hi", "chosen": "Hello", "rejected": "Go"},
        {"system": "Column.", "prompt": [system("Own."), user("Hi")], "chosen": "Hello", "rejected": "Go"},
    ]
    result = load_preferences(write_jsonl(tmp_path, rows))
    prompts = [p["prompt"] for p in result.pairs]
    assert prompts[0] == [system("Be kind."), user("Hi")]
    assert prompts[1] == prompts[2] == [user("Hi")]
    assert prompts[3] == [system("Own."), user("Hi")]


def test_system_column_with_conversations(tmp_path):
    rows = [{"system": "Be kind.", "chosen": [user("Q"), assistant("a")], "rejected": [user("Q"), assistant("b")]}]
    assert load_preferences(write_jsonl(tmp_path, rows)).pairs[0]["prompt"] == [system("Be kind."), user("Q")]


def test_mapped_columns(tmp_path):
    rows = [{"q": "Hi", "good": "Hello", "bad": "Go", "sys": "Be kind.", "prompt": "ignored"}]
    mapping = Columns(prompt="q", chosen="good", rejected="bad", system="sys")
    result = load_preferences(write_jsonl(tmp_path, rows), columns=mapping)
    assert result.report.layout.startswith("mapped columns")
    assert result.pairs == [{
        "prompt": [system("Be kind."), user("Hi")], "chosen": [assistant("Hello")], "rejected": [assistant("Go")],
    }]


def test_partial_mapping_auto_detects_the_rest(tmp_path):
    rows = [{"prompt": "Hi", "winner": "Hello", "rejected": "Go"}]
    result = load_preferences(write_jsonl(tmp_path, rows), columns=Columns(chosen="winner"))
    assert result.pairs[0]["chosen"] == [assistant("Hello")]


def test_mapped_column_missing(tmp_path):
    path = write_jsonl(tmp_path, simple_rows(1))
    with pytest.raises(DataError) as err:
        load_preferences(path, columns=Columns(chosen="best"))
    message = str(err.value)
    assert "'best'" in message and "data.jsonl" in message
    assert "Columns found: prompt, chosen, rejected" in message


# --------------------------------------------------------------------------- other formats


def test_json_array(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(simple_rows(3)), encoding="utf-8")
    result = load_preferences(path)
    assert (result.report.format, result.report.pairs) == ("json", 3)


def test_json_object_with_records_under_a_key(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"version": 1, "data": simple_rows(2)}), encoding="utf-8")
    assert len(load_preferences(path)) == 2


def test_json_array_non_object_record_is_dropped(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(simple_rows(2) + [["not", "a", "record"]]), encoding="utf-8")
    result = load_preferences(path)
    assert result.report.rows == 3
    assert only_drop(result) == {"row": 3, "reason": "not a JSON object (got list)"}


def test_json_suffix_holding_json_lines_is_read_as_jsonl(tmp_path):
    path = write_jsonl(tmp_path, simple_rows(2), name="data.json")
    result = load_preferences(path)
    assert (result.report.format, len(result)) == ("jsonl", 2)


def test_csv_strings(tmp_path):
    import pandas as pd

    path = tmp_path / "data.csv"
    pd.DataFrame([
        {"prompt": "Line one,\nline two", "chosen": "Yes", "rejected": "No"},
        {"prompt": "Q", "chosen": "", "rejected": "No"},
    ]).to_csv(path, index=False)
    result = load_preferences(path)
    assert result.report.format == "csv"
    assert result.pairs[0]["prompt"] == [user("Line one,\nline two")]
    assert only_drop(result) == {"row": 2, "reason": "chosen is empty"}


def test_csv_cell_holding_a_json_conversation(tmp_path):
    import pandas as pd

    path = tmp_path / "data.csv"
    pd.DataFrame([
        {"chosen": json.dumps([user("Q"), assistant("right")]), "rejected": json.dumps([user("Q"), assistant("wrong")])},
        {"chosen": json.dumps([user("Q"), assistant("ok")]), "rejected": "[not json"},
    ]).to_csv(path, index=False)
    result = load_preferences(path)
    assert result.report.layout == "chosen/rejected conversations"
    assert result.pairs == [{"prompt": [user("Q")], "chosen": [assistant("right")], "rejected": [assistant("wrong")]}]
    drop = only_drop(result)
    assert drop["row"] == 2 and drop["reason"].startswith("rejected is not a valid JSON message list")


def test_csv_trl_conversational_prompt_cell(tmp_path):
    import pandas as pd

    path = tmp_path / "data.csv"
    pd.DataFrame([{
        "prompt": json.dumps([user("Q")]),
        "chosen": json.dumps([assistant("a")]),
        "rejected": json.dumps([assistant("b")]),
    }]).to_csv(path, index=False)
    result = load_preferences(path)
    assert result.report.layout == "conversational"
    assert result.pairs[0]["prompt"] == [user("Q")]


def test_csv_text_starting_with_a_bracket_stays_text(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('prompt,chosen,rejected\nQ,"[1] see note",b\nQ,"[1, 2]",c\n', encoding="utf-8")
    result = load_preferences(path)
    assert result.report.layout == "prompt/chosen/rejected strings"
    assert [p["chosen"][0]["content"] for p in result.pairs] == ["[1] see note", "[1, 2]"]


def test_parquet_conversations(tmp_path):
    import pandas as pd

    path = tmp_path / "data.parquet"
    pd.DataFrame([
        {"prompt": "Q1", "chosen": [user("Q1"), assistant("a")], "rejected": [user("Q1"), assistant("b")]},
        {"prompt": "Q2", "chosen": [user("Q2"), assistant("c")], "rejected": [user("Q2"), assistant("c ")]},
    ]).to_parquet(path)
    result = load_preferences(path)
    assert (result.report.format, result.report.layout) == ("parquet", "chosen/rejected conversations")
    assert result.pairs == [{"prompt": [user("Q1")], "chosen": [assistant("a")], "rejected": [assistant("b")]}]
    assert only_drop(result) == {"row": 2, "reason": "chosen is identical to rejected"}


# --------------------------------------------------------------------------- row faults


@pytest.mark.parametrize("bad_row, reason", [
    ({"prompt": "Q", "chosen": "a"}, "rejected is missing"),
    ({"prompt": None, "chosen": "a", "rejected": "b"}, "prompt is missing"),
    ({"prompt": "Q", "chosen": "", "rejected": "b"}, "chosen is empty"),
    ({"prompt": "Q", "chosen": "a", "rejected": " \n\t "}, "rejected is empty"),
    ({"prompt": 42, "chosen": "a", "rejected": "b"}, "prompt is not text (got int)"),
    ({"prompt": "Q", "chosen": {"text": "a"}, "rejected": "b"}, "chosen is not text (got dict)"),
    ({"prompt": "Q", "chosen": " same ", "rejected": "same"}, "chosen is identical to rejected"),
    ({"prompt": [user("   ")], "chosen": "a", "rejected": "b"}, "prompt: message 1 has empty content"),
    ({"prompt": [user("Q"), assistant("A")], "chosen": "a", "rejected": "b"},
     "prompt: last message is from 'assistant', expected 'user'"),
    ({"prompt": "Q", "chosen": "a", "rejected": "b", "system": 5}, "system is not text (got int)"),
])
def test_string_layout_row_faults(tmp_path, bad_row, reason):
    rows = simple_rows(3)
    rows.insert(2, bad_row)
    result = load_preferences(write_jsonl(tmp_path, rows))
    assert (result.report.rows, result.report.pairs) == (4, 3)
    assert only_drop(result) == {"row": 3, "reason": reason}


@pytest.mark.parametrize("chosen, rejected, reason", [
    ([assistant("")], [assistant("b")], "chosen: message 1 has empty content"),
    ([assistant("a"), user("more?")], [assistant("b")], "chosen: last message is from 'user', expected 'assistant'"),
    ([assistant("a")], "b", "rejected is not a message list (got str)"),
    ([assistant("a")], [], "rejected is empty"),
    ([{"role": "bot", "content": "a"}], [assistant("b")], "chosen: message 1 has unknown role 'bot'"),
    ([{"content": "a"}], [assistant("b")], "chosen: message 1 is not a {role, content} object"),
    ([assistant("a")], [{"role": "assistant", "content": 3}], "rejected: message 1 content is not text (got int)"),
    ([assistant("same")], [assistant("same")], "chosen is identical to rejected"),
])
def test_conversational_row_faults(tmp_path, chosen, rejected, reason):
    good = {"prompt": [user("Q")], "chosen": [assistant("a")], "rejected": [assistant("b")]}
    rows = [good, good, {"prompt": [user("Q")], "chosen": chosen, "rejected": rejected}, good]
    result = load_preferences(write_jsonl(tmp_path, rows))
    assert only_drop(result) == {"row": 3, "reason": reason}


def test_blank_lines_still_count_for_row_numbers(tmp_path):
    good, bad = json.dumps(simple_rows(1)[0]), json.dumps({"prompt": "Q", "chosen": "a", "rejected": ""})
    path = tmp_path / "data.jsonl"
    path.write_text(f"{good}\n\n   \n{good}\n\n{bad}\n", encoding="utf-8")
    result = load_preferences(path)
    assert (result.report.rows, result.report.pairs) == (3, 2)
    assert only_drop(result) == {"row": 6, "reason": "rejected is empty"}


def test_malformed_jsonl_line_is_dropped_with_its_line_number(tmp_path):
    rows = [json.dumps(r) for r in simple_rows(2)]
    path = write_jsonl(tmp_path, [rows[0], '{"prompt": "Q", "chosen": "a", "rej', rows[1], "[1, 2]"])
    result = load_preferences(path)
    assert (result.report.rows, result.report.pairs) == (4, 2)
    assert [d["row"] for d in result.report.dropped] == [2, 4]
    assert result.report.dropped[0]["reason"].startswith("not valid JSON: ")
    assert result.report.dropped[1]["reason"] == "not a JSON object (got list)"


def test_dropped_rows_are_reported_in_row_order(tmp_path, tiny_tokenizer):
    rows = [
        {"prompt": "hello " * 20, "chosen": "a", "rejected": "b"},
        "{broken",
        {"prompt": "Q", "chosen": "", "rejected": "b"},
        {"prompt": "Q", "chosen": "a", "rejected": "b"},
    ]
    result = load_preferences(write_jsonl(tmp_path, rows), tokenizer=tiny_tokenizer, max_length=10)
    assert [d["row"] for d in result.report.dropped] == [1, 2, 3]


# --------------------------------------------------------------------------- file-level errors


def test_unknown_layout_suggests_a_mapping(tmp_path):
    import pandas as pd

    path = tmp_path / "data.csv"
    pd.DataFrame([{"question_text": "Q", "good": "a", "bad": "b"}]).to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        load_preferences(path)
    message = str(err.value)
    assert "Could not tell which columns hold the prompt, chosen and rejected answers in data.csv" in message
    assert "Columns found: question_text, good, bad" in message
    assert "--prompt-col question_text --chosen-col good --rejected-col bad" in message


def test_unknown_layout_without_a_safe_guess_lists_columns(tmp_path):
    path = write_jsonl(tmp_path, [{"prompt": "Q", "response_a": "a", "response_b": "b"}])
    with pytest.raises(DataError) as err:
        load_preferences(path)
    message = str(err.value)
    assert "Columns found: prompt, response_a, response_b" in message
    assert "--chosen-col" in message and "--chosen-col response" not in message


def test_plain_answers_without_prompt_are_an_unknown_layout(tmp_path):
    with pytest.raises(DataError, match="Columns found: chosen, rejected"):
        load_preferences(write_jsonl(tmp_path, [{"chosen": "a", "rejected": "b"}]))


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="file not found: .*nope.jsonl"):
        load_preferences(missing)


def test_unknown_suffix(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello", encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_preferences(path)
    assert "data.txt" in str(err.value)
    assert all(fmt in str(err.value) for fmt in (".jsonl", ".json", ".csv", ".parquet"))


def test_non_utf8_file(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes("prompt,chosen,rejected\nCafé,oui,non\n".encode("latin-1"))
    with pytest.raises(DataError) as err:
        load_preferences(path)
    message = str(err.value)
    assert "data.csv" in message and "UTF-8" in message and "encoding" in message
    assert "line 2" in message and "0xe9" in message


def test_utf16_with_a_byte_order_mark_is_read_and_said(tmp_path):
    # PowerShell 5 and Excel's "Unicode text" write UTF-16 LE with a BOM; the BOM makes it unambiguous.
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\xff\xfe" + json.dumps(simple_rows(1)[0]).encode("utf-16-le"))
    result = load_preferences(path)
    assert result.report.pairs == 1 and any("UTF-16" in note for note in result.report.notes)


def test_utf16_bom_over_bytes_that_are_not_utf16(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\xff\xfe" + b"\x00\xd8")  # a lone high surrogate
    with pytest.raises(DataError, match="data.jsonl starts with a UTF-16 byte order mark but is not UTF-16"):
        load_preferences(path)


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"\xef\xbb\xbfprompt,chosen,rejected\nQ,a,b\n")
    assert load_preferences(path).report.columns == ["prompt", "chosen", "rejected"]


def test_truncated_json(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(simple_rows(3), indent=1)[:-40], encoding="utf-8")
    with pytest.raises(DataError, match=r"data.json is not valid JSON: .* line \d+, column \d+"):
        load_preferences(path)


def test_truncated_parquet(tmp_path):
    import pandas as pd

    whole = tmp_path / "whole.parquet"
    pd.DataFrame(simple_rows(50)).to_parquet(whole)
    path = tmp_path / "data.parquet"
    path.write_bytes(whole.read_bytes()[:-100])
    with pytest.raises(DataError, match="data.parquet"):
        load_preferences(path)


def test_all_rows_dropped(tmp_path):
    rows = [{"prompt": "Q", "chosen": "", "rejected": "b"}, {"prompt": "Q", "chosen": "a", "rejected": "a"}]
    with pytest.raises(DataError) as err:
        load_preferences(write_jsonl(tmp_path, rows))
    assert str(err.value) == (
        "No usable preference pairs in data.jsonl: 2 rows read, all dropped. "
        "First reasons: row 1: chosen is empty; row 2: chosen is identical to rejected"
    )


def test_all_lines_malformed(tmp_path):
    with pytest.raises(DataError, match="2 rows read, all dropped.*row 1: not valid JSON"):
        load_preferences(write_jsonl(tmp_path, ["{oops", "{again"]))


def test_empty_file(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="data.jsonl is empty: it holds no records"):
        load_preferences(path)


def test_hub_unreachable(monkeypatch, tmp_path):
    import datasets
    import huggingface_hub.constants

    # The constants are read at import time, so patch them as well as the environment.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as err:
        load_preferences("nobody-here/no-such-dataset")
    message = str(err.value)
    assert "hub" in message and "nobody-here/no-such-dataset" in message
    assert "could not reach" in message.lower() and "upload" in message


def test_hub_dataset_rows_are_read(monkeypatch, tmp_path):
    import datasets

    calls = []

    def fake_load(dataset_id, split):
        calls.append((dataset_id, split))
        return datasets.Dataset.from_list(simple_rows(3))

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.chdir(tmp_path)
    result = load_preferences("owner/prefs", split="train_prefs")
    assert calls == [("owner/prefs", "train_prefs")]
    assert (result.report.format, result.report.source, len(result)) == ("hub", "owner/prefs", 3)


# --------------------------------------------------------------------------- tokens


def test_tiny_tokenizer_chat_template_works(tiny_tokenizer):
    ids = tiny_tokenizer.apply_chat_template([user("hello world")], add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert len(ids) == 7  # user : hello world <eos> assistant :


def test_long_prompt_is_dropped_and_stats_computed(tmp_path, tiny_tokenizer):
    rows = [
        {"prompt": "hello world", "chosen": "hello", "rejected": "hello world hello"},  # prompt 7 tokens
        {"prompt": "a b c d e", "chosen": "x", "rejected": "y"},  # prompt 10 tokens: reaches 10
        {"prompt": "a b c d", "chosen": "x y z w", "rejected": "q"},  # prompt 9 tokens
    ]
    result = load_preferences(write_jsonl(tmp_path, rows), tokenizer=tiny_tokenizer, max_length=10)
    assert only_drop(result) == {
        "row": 2, "reason": "prompt is 10 tokens, reaches max_length 10 (the trainer would drop it)",
    }
    tokens = result.report.tokens
    assert tokens["prompt"] == {"min": 7, "mean": 8.0, "max": 9, "p95": 9}
    assert tokens["chosen"] == {"min": 1, "mean": 2.5, "max": 4, "p95": 4}
    assert tokens["rejected"] == {"min": 1, "mean": 2.0, "max": 3, "p95": 3}
    assert tokens["pair"] == {"min": 10, "mean": 11.5, "max": 13, "p95": 13}


def test_no_tokenizer_means_no_token_stats(tmp_path):
    assert load_preferences(write_jsonl(tmp_path, simple_rows(2)), max_length=1).report.tokens is None


def test_tokenizer_without_chat_template(tmp_path, tiny_tokenizer):
    bare = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer, unk_token="<unk>")
    bare.chat_template = None
    with pytest.raises(DataError, match="chat template"):
        load_preferences(write_jsonl(tmp_path, simple_rows(2)), tokenizer=bare)


# --------------------------------------------------------------------------- split, dataset, report


def test_split_is_seeded_disjoint_and_complete(tmp_path):
    data = load_preferences(write_jsonl(tmp_path, simple_rows(100)))
    train, evals = data.split(0.05, seed=7)
    again_train, again_eval = data.split(0.05, seed=7)
    _, other_eval = data.split(0.05, seed=8)
    prompts = lambda s: [p["prompt"][0]["content"] for p in s.pairs]  # noqa: E731
    assert (len(train), len(evals)) == (95, 5)
    assert prompts(evals) == prompts(again_eval) and prompts(train) == prompts(again_train)
    assert prompts(evals) != prompts(other_eval)
    assert not set(prompts(train)) & set(prompts(evals))
    assert sorted(prompts(train) + prompts(evals)) == sorted(prompts(data))
    assert (train.report.pairs, evals.report.pairs) == (95, 5)


def test_split_edge_cases(tmp_path):
    data = load_preferences(write_jsonl(tmp_path, simple_rows(3)))
    train, evals = data.split(0.0, seed=1)
    assert train is data and len(evals) == 0
    assert [len(part) for part in data.split(0.01, seed=1)] == [2, 1]
    with pytest.raises(DataError):
        data.split(1.0, seed=1)


def test_to_dataset_is_trl_conversational(tmp_path):
    from trl.data_utils import is_conversational

    rows = simple_rows(2) + [{"system": "Be kind.", "prompt": "Q", "chosen": "a", "rejected": "b"}]
    data = load_preferences(write_jsonl(tmp_path, rows))
    dataset = data.to_dataset()
    assert dataset.column_names == ["prompt", "chosen", "rejected"]
    assert len(dataset) == 3
    assert all(is_conversational(row) for row in dataset)
    assert dataset[2]["prompt"] == [system("Be kind."), user("Q")]
    empty = data.split(0.0, seed=0)[1].to_dataset()
    assert len(empty) == 0 and empty.column_names == ["prompt", "chosen", "rejected"]


def test_report_to_dict_is_json_ready(tmp_path):
    rows = simple_rows(2) + [{"prompt": "Q", "chosen": "a", "rejected": ""}]
    report = load_preferences(write_jsonl(tmp_path, rows)).report.to_dict()
    assert json.loads(json.dumps(report)) == report
    assert report["format"] == "jsonl" and report["rows"] == 3 and report["pairs"] == 2
    assert report["dropped"] == [{"row": 3, "reason": "rejected is empty"}]
    assert report["source"].endswith("data.jsonl")


def test_preference_set_len():
    assert len(PreferenceSet(pairs=[{}, {}], report=None)) == 2
