"""The OpenAI API's shapes, as pydantic models: requests tuneforge accepts, responses, stream chunks, errors.

Requests forbid unknown fields, so a typo (`temprature`) or an OpenAI feature tuneforge does not
implement (`tools`, `logprobs`, `response_format`) is a 400 naming the field rather than being
silently ignored. Responses keep the OpenAI field names and types, so the `openai` package parses them.
Every field is checked to the range the engine can honour, here, so one client's value can never
fail inside the batch it shares with others: `seed` is an int64 as OpenAI's API documents it (torch's
generator takes [-2**63, 2**64 - 1], and the engine adds the choice index, so int64 always fits);
`n` and `max_tokens` are bounded by the server's limits in completions.py.
Pinned by tests/serve/test_isolation.py.
Feedback (POST /v1/feedback) is tuneforge's own: a rating of a logged request, by its response id;
so is classification (POST /v1/classify): texts in, each one's label(s) and class probabilities out.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictInt, field_validator
from pydantic_core import PydanticCustomError

from tuneforge.serve.options import MAX_TEXTS



SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # int64, as in OpenAI's API reference


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests ----------------------------------------------------------------------------------


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(Strict):
    include_usage: bool = False


class SamplingFields(Strict):
    """What chat and text completions share."""

    model: str | None = None  # None: the server's main model
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted for compatibility; not used

    @field_validator("stop")
    @classmethod
    def stop_strings(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4:
            raise ValueError("at most 4 stop strings")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return value

    def stop_strings_tuple(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name for max_tokens

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def default_tokens(self, most: int) -> int:
        """max_tokens when the request names none: as much as the server allows."""
        return most


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    max_tokens: int | None = Field(None, ge=1)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def some_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("give at least one prompt")
        return value

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def requested_tokens(self) -> int | None:
        return self.max_tokens

    def default_tokens(self, most: int) -> int:
        return min(16, most)  # OpenAI's default for text completions


class FeedbackRequest(Strict):
    request_id: str = Field(min_length=1)  # the `id` of a completion (also its X-Request-Id header)
    rating: StrictInt  # 1: a good answer, -1: a bad one
    correction: str | None = None  # the answer that would have been right
    comment: str | None = None

    @field_validator("rating")
    @classmethod
    def plus_or_minus_one(cls, value: int) -> int:
        if value not in (1, -1):
            raise ValueError("must be 1 (a good answer) or -1 (a bad one)")
        return value


class ClassifyRequest(Strict):
    model: str | None = None
    input: str | list[str] | None = Field(None, validation_alias=AliasChoices("input", "texts"),
                                          description="a text or a list of texts (also accepted as `texts`)")
    images: list[str] | None = Field(None, description="an image classifier's images: base64 bytes of each file "
                                     "(PNG, JPEG, ...), or data URLs (data:image/png;base64,...)")
    threshold: float | None = Field(None, gt=0, lt=1, description="multi-label: override the saved threshold")

    @field_validator("input", "images")
    @classmethod
    def _some_texts(cls, value: str | list[str] | None, info) -> str | list[str] | None:
        what = "image" if info.field_name == "images" else "text"
        if isinstance(value, list) and not value:
            raise PydanticCustomError("no_texts", f"give at least one {what}")
        if isinstance(value, list) and len(value) > MAX_TEXTS:
            raise PydanticCustomError("too_many_texts", f"at most {MAX_TEXTS} {what}s per request, got {len(value)}; "
                                      "send them in several requests")
        return value

    def texts(self) -> list[str]:
        if self.input is None:
            return []
        return [self.input] if isinstance(self.input, str) else list(self.input)


# --- responses ---------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @staticmethod
    def of(prompt_tokens: int, completion_tokens: int) -> Usage:
        return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=prompt_tokens + completion_tokens)


FinishReason = Literal["stop", "length"]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None  # the registry version that answered (serving registry:ALIAS)


class ChoiceDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChoiceDelta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None  # the registry version that answered (serving registry:ALIAS)


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason | None = None  # None only in stream chunks before the end
    logprobs: None = None


class Completion(BaseModel):
    """A text completion, or one chunk of a streamed one (OpenAI uses the same object for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None  # the registry version that answered (serving registry:ALIAS)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tuneforge"
    root: str  # where it was loaded from
    parent: str | None = None  # for an adapter: the id of the base model it applies to
    version: str | None = None  # the registry version served under this name (serving registry:ALIAS)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class FeedbackReceipt(BaseModel):
    id: int  # the feedback row
    object: Literal["feedback"] = "feedback"
    request_id: str
    rating: int
    created: int


class ClassifyResult(BaseModel):
    index: int
    label: str | None = None  # single-label classifiers
    labels: list[str] | None = None  # multi-label classifiers: every class at the threshold
    scores: dict[str, float]  # every class's probability


class ClassifyResponse(BaseModel):
    id: str  # also the X-Request-Id header and the request log's key (POST /v1/feedback rates it)
    object: Literal["list"] = "list"
    model: str
    data: list[ClassifyResult]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok", "draining"]
    models: list[str]
    running: int
    waiting: int
    version: str | None = None  # the registry version being served (serving registry:ALIAS)
