"""Built-in chat templates for base models that ship none, and switching a tokenizer onto one.

A base model's tokenizer often has no chat template, yet chat data must be rendered somehow,
and the model must learn to end its turn with a token that generation stops on.  ChatML and
Llama 3 suit tokenizers that already hold their marker tokens (they are then single tokens the
model can learn); Alpaca is plain text that ends each reply with the tokenizer's own EOS, so it
works with any tokenizer.  `use_template` refuses a template whose markers the vocabulary lacks:
split into pieces, an end-of-turn marker is no stop token and the model would never stop.

Every template writes message content with `| trim` (as tokenize_example strips content before
locating it), so an assistant reply is followed directly by its end-of-turn token and both are
trained as one run.  Tool results are turns of their own; an assistant's `tool_calls` are
written after its text as `<tool_call>{"name": ..., "arguments": ...}</tool_call>` lines, the
same text data/template.py puts into the content, so training and serving see one format.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.errors import ConfigError, DataError


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    jinja: str
    end_of_turn: str | None  # the token that ends an assistant turn; None: the tokenizer's eos_token
    markers: tuple[str, ...] = ()  # other tokens the template writes, which must be single tokens too


# Jinja macros shared by the templates: a message's text (content, the tools offered when it is
# the system turn, then its tool calls), a tool call written as data/template.py writes one into the
# reply's text (arguments arrive as JSON text, OpenAI style, or as a mapping, HF style), and the
# tools offered, listed in the system turn (a turn of their own when there is no system message).
_MACROS = r"""
{%- macro tool_call_text(tool_call) -%}
    {%- set call = tool_call.function if tool_call.function is defined else tool_call -%}
    {{- '<tool_call>{"name": ' + (call.name | tojson) + ', "arguments": ' -}}
    {%- if call.arguments is string -%}{{- call.arguments -}}{%- else -%}{{- call.arguments | tojson -}}{%- endif -%}
    {{- '}</tool_call>' -}}
{%- endmacro -%}
{%- macro message_text(message) -%}
    {%- if message.content -%}{{- message.content | trim -}}{%- endif -%}
    {%- if message.role == 'system' and has_tools -%}{{- '\n\n' + tool_list() -}}{%- endif -%}
    {%- if message.tool_calls is defined and message.tool_calls -%}
        {%- for tool_call in message.tool_calls -%}
            {%- if message.content or not loop.first -%}{{- '\n' -}}{%- endif -%}
            {{- tool_call_text(tool_call) -}}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
{%- macro tool_list() -%}
    {{- 'You can call these tools; to call one, answer with <tool_call>{"name": ..., "arguments": ...}</tool_call>:' -}}
    {%- if tools is string -%}{{- '\n' + tools -}}{%- else -%}
        {%- for tool in tools -%}{{- '\n' + (tool | tojson) -}}{%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
{%- set has_tools = tools is defined and tools -%}
{%- set tools_first = has_tools and (not messages or messages[0].role != 'system') -%}
"""

CHATML = ChatTemplate(
    name="chatml",
    end_of_turn="<|im_end|>",
    markers=("<|im_start|>",),
    jinja=_MACROS + r"""
{%- if tools_first -%}{{ '<|im_start|>system\n' + tool_list() + '<|im_end|>\n' }}{%- endif -%}
{%- for message in messages -%}
    {{ '<|im_start|>' + message.role + '\n' }}
    {{- message_text(message) -}}
    {{ '<|im_end|>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}
""",
)

# Tool results come from the `ipython` role, as in Llama 3.1.
LLAMA3 = ChatTemplate(
    name="llama3",
    end_of_turn="<|eot_id|>",
    markers=("<|start_header_id|>", "<|end_header_id|>"),
    jinja=_MACROS + r"""
{{ bos_token | default('') }}
{%- if tools_first -%}
    {{ '<|start_header_id|>system<|end_header_id|>\n\n' + tool_list() + '<|eot_id|>' }}
{%- endif -%}
{%- for message in messages -%}
    {%- set role = 'ipython' if message.role == 'tool' else message.role -%}
    {{ '<|start_header_id|>' + role + '<|end_header_id|>\n\n' }}
    {{- message_text(message) -}}
    {{ '<|eot_id|>' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif -%}
""",
)

# Plain text for base models: blocks separated by blank lines, each reply ended by the EOS token.
ALPACA = ChatTemplate(
    name="alpaca",
    end_of_turn=None,
    jinja=_MACROS + r"""
{%- if tools_first -%}{{ tool_list() + '\n\n' }}{%- endif -%}
{%- for message in messages -%}
    {%- if message.role == 'system' -%}
        {{ message.content | trim }}
        {%- if has_tools -%}{{ '\n\n' + tool_list() }}{%- endif -%}
        {{ '\n\n' }}
    {%- elif message.role == 'user' -%}
        {{ '### Instruction:\n' + (message.content | trim) + '\n\n' }}
    {%- elif message.role == 'tool' -%}
        {{ '### Tool result:\n' + (message.content | trim) + '\n\n' }}
    {%- elif message.role == 'assistant' -%}
        {{ '### Response:\n' }}
        {{- message_text(message) -}}
        {{ eos_token }}
        {%- if not loop.last -%}{{ '\n\n' }}{%- endif -%}
    {%- else -%}
        {{ raise_exception('the alpaca template has no role ' + message.role) }}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {%- if messages and messages[-1].role == 'assistant' -%}{{ '\n\n' }}{%- endif -%}
    {{ '### Response:\n' }}
{%- endif -%}
""",
)

BUILTIN_TEMPLATES: dict[str, ChatTemplate] = {t.name: t for t in (CHATML, LLAMA3, ALPACA)}


def builtin_template(name: str) -> ChatTemplate:
    """The built-in template of that name, or a ConfigError listing the names there are."""
    if name not in BUILTIN_TEMPLATES:
        known = ", ".join(["tokenizer", *BUILTIN_TEMPLATES])
        raise ConfigError(f"data.template: unknown template {name!r}; choose one of {known}")
    return BUILTIN_TEMPLATES[name]


def single_token_id(tokenizer, token: str) -> int | None:
    """The id `token` encodes to when it appears in rendered text, or None if it splits into pieces."""
    ids = tokenizer.encode(token, add_special_tokens=False)
    return ids[0] if len(ids) == 1 and token in tokenizer.get_vocab() else None


def use_template(tokenizer, template: ChatTemplate) -> list[int]:
    """Render chats with `template` from now on; returns the ids that end an assistant turn (add them to the stop ids)."""
    if template.end_of_turn is None:
        if tokenizer.eos_token is None:
            raise DataError(
                f"the {template.name} template ends each reply with the tokenizer's EOS token, "
                "but this tokenizer has none"
            )
        end_of_turn = tokenizer.eos_token
    else:
        end_of_turn = template.end_of_turn
    missing = [t for t in (end_of_turn, *template.markers) if single_token_id(tokenizer, t) is None]
    if missing:
        raise DataError(
            f"the {template.name} chat template needs {', '.join(missing)} as single tokens, but this "
            "tokenizer's vocabulary lacks them (split into pieces, an end-of-turn marker cannot stop "
            "generation); use the alpaca template (data.template: alpaca), which ends each reply with "
            f"the tokenizer's own EOS token{f' {tokenizer.eos_token}' if tokenizer.eos_token else ''}"
        )
    tokenizer.chat_template = template.jinja
    return [single_token_id(tokenizer, end_of_turn)]
