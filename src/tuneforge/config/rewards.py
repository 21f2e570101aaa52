"""The `grpo:` and `rewards:` sections of a run file: GRPO's sampling and update settings, and the rewards.

A reward is either a Python function (`module:function` or `path/to/file.py:function`, TRL's keyword
signature) or a declarative grader in the shape of OpenAI's graders (string_check, text_similarity,
python, score_model, multi); evaluate/graders.py scores them and evaluate/rewards.py loads them.
The shapes are checked here, at load time, so a misspelled key names its file and line.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

SIMILARITY_METRICS = ("fuzzy_match", "bleu", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l")


class Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StringCheck(Shape):
    """1.0 when `input` compares to `reference` as `operation` says, else 0.0 (OpenAI: string_check)."""

    type: Literal["string_check"]
    name: str | None = None
    input: str = "{{ sample.output_text }}"
    reference: str
    operation: Literal["eq", "ne", "like", "ilike"] = Field(
        description="eq / ne: exact (in)equality; like: reference contained (case-sensitive); ilike: ignoring case"
    )


class TextSimilarity(Shape):
    """A similarity in [0, 1] between `input` and `reference` (OpenAI: text_similarity)."""

    type: Literal["text_similarity"]
    name: str | None = None
    input: str = "{{ sample.output_text }}"
    reference: str
    evaluation_metric: Literal[SIMILARITY_METRICS]  # type: ignore[valid-type]
    pass_threshold: float | None = Field(None, description="when set, the score is 1.0 at or above it, else 0.0")


class PythonGrader(Shape):
    """Python source defining `grade(sample, item) -> float` (OpenAI: python grader)."""

    type: Literal["python"]
    name: str | None = None
    source: str


class ScoreModel(Shape):
    """A model behind an OpenAI-compatible endpoint scores the answer with a rubric (OpenAI: score_model)."""

    type: Literal["score_model"]
    name: str | None = None
    model: str = Field(description="the model name sent to the endpoint")
    base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible endpoint, e.g. tuneforge serve")
    api_key_env: str | None = Field(None, description="environment variable holding the endpoint's API key")
    input: list[dict[str, str]] = Field(min_length=1, description="chat messages (role, content) with {{ }} templates")
    range: tuple[float, float] = Field((0.0, 1.0), description="the score's range; parsed scores are clamped to it")
    sampling_params: dict[str, float | int] = Field(default_factory=dict, description="temperature, max_tokens, ...")


class Multi(Shape):
    """A formula over named graders (OpenAI: multi), e.g. `0.5 * format + 0.5 * correct`."""

    type: Literal["multi"]
    name: str | None = None
    graders: dict[str, Grader] = Field(min_length=1)
    calculate_output: str


Grader = Annotated[Union[StringCheck, TextSimilarity, PythonGrader, ScoreModel, Multi], Field(discriminator="type")]
Multi.model_rebuild()


class RewardConfig(Shape):
    """One weighted reward: a Python function or a grader, exactly one of them."""

    function: str | None = Field(None, description="module:function or path/to/file.py:function (TRL's signature)")
    grader: Grader | None = None
    weight: float = 1.0

    @model_validator(mode="after")
    def _one_source(self) -> RewardConfig:
        if (self.function is None) == (self.grader is None):
            raise ValueError("give a reward either `function: module:function` or `grader: {type: ...}`")
        if self.function is not None and ":" not in self.function:
            raise ValueError(f"function {self.function!r} must be module:function or path/to/file.py:function")
        return self

    @property
    def name(self) -> str:
        """What the logs call it: the grader's name or type, or the function's name."""
        if self.function is not None:
            return self.function.rsplit(":", 1)[1]
        return self.grader.name or self.grader.type


class GRPOConfig(Shape):
    """Settings of `task: grpo` (docs/grpo.md explains each)."""

    num_generations: int = Field(8, ge=2, description="G: answers sampled per prompt (a group)")
    temperature: float = Field(1.0, gt=0.0, description="sampling temperature of the group's answers")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(64, ge=1, description="length limit of a sampled answer")
    beta: float = Field(0.0, ge=0.0, description="weight of the KL (k3) to the reference (the adapter off); 0: no "
                        "reference pass")
    epsilon: float = Field(0.2, gt=0.0, lt=1.0, description="clip range of the probability ratio")
    num_iterations: int = Field(1, ge=1, description="updates per generated batch (old log-probs kept)")
    scale_rewards: bool = Field(True, description="divide advantages by the group's reward std (false: Dr. GRPO)")
    loss_normalization: Literal["token"] = Field(
        "token", description="token: the loss is summed over every answer token of the step and divided by their "
        "count (DAPO / Dr. GRPO), so long answers weigh per token, not per answer"
    )
    reward_timeout_s: float = Field(30.0, gt=0.0, description="a reward call taking longer fails the run")
    pass_threshold: float = Field(1.0, description="a held-out answer passes when its total reward reaches this")
    eval_max_prompts: int = Field(64, ge=1, description="held-out prompts answered before and after training")
    generation_batch_size: int = Field(64, ge=1, description="sequences generated together (prompts x G)")
    pack_for_generation: bool = Field(True, description="LoRA on a CPU with native bf16: the frozen bf16 base layers "
                                      "packed once for decoding (faster rollouts; ~2 bytes per base parameter more memory)")
