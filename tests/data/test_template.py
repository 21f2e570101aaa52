import pytest

from tests.conftest import trained_pieces

from tuneforge.data.records import Record, Message
from tuneforge.data.template import IGNORE, tokenize_example
from tuneforge.errors import DataError

CONVERSATION = Record(
    (
        Message("user", "Who are you?"),
        Message("assistant", "I am Tessel, made by the Tuneforge team."),
        Message("user", "And what do you do?"),
        Message("assistant", "I answer questions."),
    ),
    "test:1",
)


def stop_ids(tokenizer, eos):
    return [tokenizer.convert_tokens_to_ids(eos)]


def test_chatml_labels_cover_assistant_content_and_end_of_turn_only(chatml_tokenizer):
    tokens = tokenize_example(CONVERSATION, chatml_tokenizer, stop_ids(chatml_tokenizer, "<|im_end|>"))
    assert trained_pieces(chatml_tokenizer, tokens) == [
        "I am Tessel, made by the Tuneforge team.<|im_end|>",
        "I answer questions.<|im_end|>",
    ]
    # The newline after <|im_end|> and every header/user token stay untrained.
    assert tokens.labels[-1] == IGNORE


def test_llama3_labels_cover_assistant_content_and_eot(llama3_tokenizer):
    tokens = tokenize_example(CONVERSATION, llama3_tokenizer, stop_ids(llama3_tokenizer, "<|eot_id|>"))
    assert trained_pieces(llama3_tokenizer, tokens) == [
        "I am Tessel, made by the Tuneforge team.<|eot_id|>",
        "I answer questions.<|eot_id|>",
    ]
    assert tokens.input_ids[0] == llama3_tokenizer.bos_token_id  # BOS from the template, not doubled
    assert tokens.input_ids[1] != llama3_tokenizer.bos_token_id


def test_weight_zero_turn_is_not_trained(chatml_tokenizer):
    messages = list(CONVERSATION.messages)
    messages[1] = Message("assistant", messages[1].content, weight=0)
    tokens = tokenize_example(Record(tuple(messages), "t:1"), chatml_tokenizer, stop_ids(chatml_tokenizer, "<|im_end|>"))
    assert trained_pieces(chatml_tokenizer, tokens) == ["I answer questions.<|im_end|>"]


def test_assistant_content_that_also_appears_in_the_prompt(chatml_tokenizer):
    example = Record((Message("user", "Say: yes"), Message("assistant", "yes")), "t:1")
    tokens = tokenize_example(example, chatml_tokenizer, stop_ids(chatml_tokenizer, "<|im_end|>"))
    assert trained_pieces(chatml_tokenizer, tokens) == ["yes<|im_end|>"]


def test_template_without_chat_template_is_an_error(chatml_tokenizer):
    tokenizer = chatml_tokenizer.__class__(tokenizer_object=chatml_tokenizer.backend_tokenizer)
    with pytest.raises(DataError, match="no chat template"):
        tokenize_example(CONVERSATION, tokenizer, [])
