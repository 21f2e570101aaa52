"""The jobs API's request shapes (OpenAI's, plus the `tuneforge` run-file field) and its list envelope.

Requests forbid unknown fields, as serve's do (serve/protocol.py): a misspelled field is a 400
naming it, never silently ignored. The `method` object keeps each method's own settings as a
mapping; translate.py checks them against what that method accepts.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

SUFFIX = re.compile(r"^[A-Za-z0-9_.-]*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MethodRequest(Strict):
    type: str
    supervised: dict[str, Any] | None = None
    dpo: dict[str, Any] | None = None
    reinforcement: dict[str, Any] | None = None


class JobRequest(Strict):
    model: str = Field(min_length=1)
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    suffix: str | None = Field(None, max_length=64)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    hyperparameters: dict[str, Any] | None = None  # OpenAI's older place for supervised hyperparameters
    method: MethodRequest | None = None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None
    # tuneforge's extension: any run-file keys, nested as in RUN.yaml (translate.py), e.g. {"lora": {"r": 8}}
    tuneforge: dict[str, Any] | None = None

    @field_validator("suffix")
    @classmethod
    def _suffix_chars(cls, value: str | None) -> str | None:
        if value and not SUFFIX.match(value):
            raise ValueError("letters, digits, '-', '_' and '.' only (it becomes part of the model's name)")
        return value or None

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value and (len(value) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in value.items())):
            raise ValueError("at most 16 pairs, keys up to 64 characters, values up to 512")
        return value


def listing(data: list[dict], has_more: bool) -> dict:
    """OpenAI's cursor page: the openai client asks for the next page with after=<the last id>."""
    return {"object": "list", "data": data, "has_more": has_more,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}
