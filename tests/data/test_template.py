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


def test_tokenizing_after_a_padded_batch_call_adds_no_padding(chatml_tokenizer):
    """transformers leaves the Rust tokenizer's padding on after tokenizer(..., padding=True) (as batched
    generation calls it, left-padded): records tokenized afterwards must not come back padded."""
    from tuneforge.data.prepare import tokenizer_fingerprint
    from tuneforge.data.records import Message, Record
    from tuneforge.data.template import tokenize_records

    records = [Record((Message("user", "Hi"), Message("assistant", "Hello there, friend.")), "a"),
               Record((Message("user", "What is a long question with many words in it?"),
                       Message("assistant", "Yes.")), "b")]
    stops = [chatml_tokenizer.convert_tokens_to_ids("<|im_end|>")]
    before = tokenize_records(records, chatml_tokenizer, stops)
    fingerprint = tokenizer_fingerprint(chatml_tokenizer)
    chatml_tokenizer.padding_side = "left"
    try:
        chatml_tokenizer(["short", "a much longer text than the first one"], padding=True)
        assert chatml_tokenizer.backend_tokenizer.padding is not None  # the state this guards against
        after = tokenize_records(records, chatml_tokenizer, stops)
        assert [t.input_ids for t in after] == [t.input_ids for t in before]
        assert [t.labels for t in after] == [t.labels for t in before]
        assert tokenizer_fingerprint(chatml_tokenizer) == fingerprint
        assert chatml_tokenizer.backend_tokenizer.padding is not None  # the caller's state is restored
    finally:
        chatml_tokenizer.padding_side = "right"
        chatml_tokenizer.backend_tokenizer.no_padding()
