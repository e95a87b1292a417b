"""The chat's text handling without a model: the cut mark, what the model sees of it, the prompt budget."""

import pytest

from studio.errors import PromptError
from studio.prompt_budget import budget_line, check_prompt
from studio.ui.chat_tab import CUT_MARK, for_model, with_cut_mark


def test_the_cut_mark_closes_an_open_code_block_so_it_reads_as_text():
    answer = "Here is the code:\n```python\nfor i in range(3):\n    print(i"
    marked = with_cut_mark(answer, 200)
    assert marked.endswith("\n```\n\n*[cut at 200 tokens]*")
    assert marked.count("```") % 2 == 0  # every block closed before the mark
    plain = with_cut_mark("A plain answer", 16)
    assert plain == "A plain answer\n\n*[cut at 16 tokens]*"


@pytest.mark.parametrize("answer", ["A plain answer", "Code:\n```\nx = 1", "Closed:\n```\nx = 1\n```\nand more"])
def test_the_model_never_sees_the_mark_or_the_fence_added_for_it(answer):
    messages = [{"role": "assistant", "content": with_cut_mark(answer, 64)}]
    assert for_model(messages)[0]["content"] == answer
    assert CUT_MARK not in for_model(messages)[0]["content"]


def test_a_prompt_that_does_not_leave_room_for_the_answer_is_refused_with_the_numbers():
    check_prompt(7992, 200, 8192)  # exactly fits
    with pytest.raises(PromptError, match=r"7,993 tokens.*8,192 tokens and 200 are kept.*by 1 tokens"):
        check_prompt(7993, 200, 8192)
    check_prompt(10**6, 200, None)  # a model that does not say its context: nothing to check against
    assert "too long" in budget_line(9000, 200, 8192) and "too long" not in budget_line(12, 200, 8192)
    assert budget_line(12, 200, 8192) == "Prompt: 12 tokens of the model's 8,192-token context (200 kept for the answer)."
