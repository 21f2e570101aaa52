"""Built-in chat templates: exactly assistant content + end-of-turn is trained under each; bad vocabularies are refused."""

from __future__ import annotations

import pytest

from tests.conftest import trained_pieces, train_tokenizer
from tuneforge.models.chat_templates import ALPACA, BUILTIN_TEMPLATES, CHATML, LLAMA3, builtin_template, use_template
from tuneforge.data.records import Message, Record, ToolCall
from tuneforge.data.template import IGNORE, tokenize_example
from tuneforge.errors import ConfigError, DataError

CONVERSATION = Record(
    (
        Message("system", "You are Tessel, a terse assistant."),
        Message("user", "Who are you?"),
        Message("assistant", "I am Tessel, made by the Tuneforge team."),
        Message("user", "And what do you do?"),
        Message("assistant", "I answer questions.\n"),  # trailing whitespace is trimmed, not trained
    ),
    "test:1",
)
END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "alpaca": "<|endoftext|>"}


@pytest.fixture(scope="module")
def vocabulary():
    """A tokenizer with every marker the built-ins need and an EOS (<|endoftext|>) of its own."""
    return train_tokenizer("", eos="<|endoftext|>", bos="<|begin_of_text|>")


@pytest.fixture
def fresh(vocabulary):
    """A copy per test, as use_template sets the tokenizer's chat template."""
    return lambda: vocabulary.__class__(
        tokenizer_object=vocabulary.backend_tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        bos_token="<|begin_of_text|>",
    )


def render(tokenizer, messages, **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_trained_tokens_are_exactly_each_reply_and_its_end_of_turn(fresh, name):
    tokenizer = fresh()
    stop_ids = use_template(tokenizer, BUILTIN_TEMPLATES[name])
    assert stop_ids == [tokenizer.convert_tokens_to_ids(END_OF_TURN[name])]
    tokens = tokenize_example(CONVERSATION, tokenizer, stop_ids)
    assert trained_pieces(tokenizer, tokens) == [
        f"I am Tessel, made by the Tuneforge team.{END_OF_TURN[name]}",
        f"I answer questions.{END_OF_TURN[name]}",
    ]
    assert tokens.input_ids.count(stop_ids[0]) == (2 if name == "alpaca" else 5)  # per reply (alpaca) or per turn


def test_rendered_conversations(fresh):
    expected = {
        "chatml": "<|im_start|>system\nYou are Tessel, a terse assistant.<|im_end|>\n"
        "<|im_start|>user\nWho are you?<|im_end|>\n"
        "<|im_start|>assistant\nI am Tessel, made by the Tuneforge team.<|im_end|>\n"
        "<|im_start|>user\nAnd what do you do?<|im_end|>\n"
        "<|im_start|>assistant\nI answer questions.<|im_end|>\n",
        "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are Tessel, a terse assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWho are you?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nI am Tessel, made by the Tuneforge team.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nAnd what do you do?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nI answer questions.<|eot_id|>",
        "alpaca": "You are Tessel, a terse assistant.\n\n"
        "### Instruction:\nWho are you?\n\n### Response:\nI am Tessel, made by the Tuneforge team.<|endoftext|>\n\n"
        "### Instruction:\nAnd what do you do?\n\n### Response:\nI answer questions.<|endoftext|>",
    }
    for name, text in expected.items():
        tokenizer = fresh()
        use_template(tokenizer, BUILTIN_TEMPLATES[name])
        assert render(tokenizer, CONVERSATION.as_dicts()) == text, name


@pytest.mark.parametrize(
    "template, header",
    [(CHATML, "<|im_start|>assistant\n"), (LLAMA3, "<|start_header_id|>assistant<|end_header_id|>\n\n"),
     (ALPACA, "\n\n### Response:\n")],
)
def test_generation_prompt_ends_with_the_assistant_header(fresh, template, header):
    tokenizer = fresh()
    use_template(tokenizer, template)
    prompt = CONVERSATION.as_dicts()[:2]
    plain = render(tokenizer, prompt)
    with_header = render(tokenizer, prompt, add_generation_prompt=True)
    assert with_header.endswith(header) and with_header.startswith(plain)
    assert with_header[len(plain):] == header.lstrip("\n")  # alpaca's blank line is already there
    assert render(tokenizer, [{"role": "user", "content": "Hi"}], add_generation_prompt=True).endswith(header)


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_tool_results_and_calls_render_and_replies_after_them_are_trained(fresh, name):
    tokenizer = fresh()
    stop_ids = use_template(tokenizer, BUILTIN_TEMPLATES[name])
    conversation = Record(
        (Message("user", "Weather in Oslo?"), Message("assistant", "Checking."),
         Message("tool", '{"sky": "sunny"}'), Message("assistant", "It is sunny in Oslo.")),
        "test:2",
    )
    text = render(tokenizer, conversation.as_dicts())
    marker = {"chatml": "<|im_start|>tool\n", "llama3": "<|start_header_id|>ipython<|end_header_id|>\n\n",
              "alpaca": "### Tool result:\n"}[name]
    assert marker + '{"sky": "sunny"}' in text
    tokens = tokenize_example(conversation, tokenizer, stop_ids)
    assert trained_pieces(tokenizer, tokens) == [f"Checking.{END_OF_TURN[name]}",
                                                 f"It is sunny in Oslo.{END_OF_TURN[name]}"]

    calls = [{"role": "user", "content": "Weather?"},
             {"role": "assistant", "content": "", "tool_calls": [
                 {"type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]}]
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    text = render(tokenizer, calls, tools=tools)
    assert f'<tool_call>{{"name": "weather", "arguments": {{"city": "Oslo"}}}}</tool_call>{END_OF_TURN[name]}' in text
    assert '{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}' in text


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_a_records_tool_call_is_trained_with_the_end_of_turn(fresh, name):
    tokenizer = fresh()
    stop_ids = use_template(tokenizer, BUILTIN_TEMPLATES[name])
    tools = '[{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]'
    record = Record(
        (Message("system", "Be brief."), Message("user", "Weather in Oslo?"),
         Message("assistant", "", tool_calls=(ToolCall("weather", '{"city": "Oslo"}'),)),
         Message("tool", '{"sky": "sunny"}'), Message("assistant", "Sunny.")),
        "test:3", tools=tools,
    )
    tokens = tokenize_example(record, tokenizer, stop_ids)
    assert trained_pieces(tokenizer, tokens) == [
        f'<tool_call>{{"name": "weather", "arguments": {{"city": "Oslo"}}}}</tool_call>{END_OF_TURN[name]}',
        f"Sunny.{END_OF_TURN[name]}",
    ]
    text = tokenizer.decode(tokens.input_ids)
    assert text.count('"name": "weather", "parameters"') == 1  # the schema is listed once, in the system turn


def test_alpaca_ends_each_reply_with_the_tokenizers_eos(fresh):
    tokenizer = fresh()
    assert use_template(tokenizer, ALPACA) == [tokenizer.eos_token_id]
    text = render(tokenizer, CONVERSATION.as_dicts())
    assert "I am Tessel, made by the Tuneforge team.<|endoftext|>\n\n### Instruction:" in text
    assert text.endswith("### Response:\nI answer questions.<|endoftext|>")


def test_alpaca_without_an_eos_token_is_an_error(fresh):
    tokenizer = fresh()
    tokenizer.eos_token = None
    with pytest.raises(DataError, match="alpaca.*EOS"):
        use_template(tokenizer, ALPACA)


def test_chatml_on_a_vocabulary_without_im_end_names_the_token_and_suggests_alpaca():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.train_from_iterator(["a base model's plain text"] * 4, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="</s>")
    assert "<|im_end|>" not in tokenizer.get_vocab()
    with pytest.raises(DataError, match=r"chatml.*<\|im_end\|>.*alpaca") as error:
        use_template(tokenizer, CHATML)
    assert "<|im_start|>" in str(error.value)
    assert tokenizer.chat_template is None  # nothing changed
    assert use_template(tokenizer, ALPACA) == [tokenizer.convert_tokens_to_ids("</s>")]


def test_unknown_template_name_lists_the_choices():
    assert builtin_template("llama3") is LLAMA3
    with pytest.raises(ConfigError, match="tokenizer, chatml, llama3, alpaca"):
        builtin_template("vicuna")
