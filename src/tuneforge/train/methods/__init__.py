"""The one place a run file's `task` becomes a training method object for the step driver.

Nothing else in tuneforge branches on the task: the driver asks the method, and the CLI asks the
`MethodKind` here whether the method trains in several processes and under which precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from tuneforge.config import RunConfig
from tuneforge.models.load import pick_dtype, trains_under_autocast
from tuneforge.train.method import Method
from tuneforge.train.methods.classify import ClassifyMethod
from tuneforge.train.methods.classify import closing as classify_closing
from tuneforge.train.methods.grpo import GRPOMethod
from tuneforge.train.methods.image_classify import ImageClassifyMethod
from tuneforge.train.methods.image_classify import closing as image_closing
from tuneforge.train.methods.grpo import closing as grpo_closing
from tuneforge.train.methods.language_model import CHAT, PRETRAIN, LanguageModelMethod
from tuneforge.train.methods.language_model import closing as lm_closing
from tuneforge.train.methods.preference import PreferenceMethod
from tuneforge.train.methods.preference import closing as preference_closing


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def lm_autocast(config: RunConfig) -> bool:
    """bf16 autocast wherever bf16 matmuls are native, CPUs included (models/load.py)."""
    return trains_under_autocast(config.model.dtype, device())


def answering_dtype_autocast(config: RunConfig) -> bool:
    """An encoder trains in the dtype it answers in: bf16 autocast on CUDA, fp32 on a CPU."""
    return pick_dtype(config.model.dtype, device()) != torch.float32


@dataclass(frozen=True)
class MethodKind:
    build: Callable[..., Method]  # (config, accelerator, console) -> the method object
    autocast: Callable[[RunConfig], bool]  # whether it trains under bf16 autocast
    multi_process: bool  # whether --nproc N works for it
    closing: Callable[..., list[str]]  # (TrainResult) -> what `tuneforge train` prints after a finished run


METHODS: dict[str, MethodKind] = {
    "chat": MethodKind(partial(LanguageModelMethod, task=CHAT), lm_autocast, True, partial(lm_closing, task=CHAT)),
    "pretrain": MethodKind(partial(LanguageModelMethod, task=PRETRAIN), lm_autocast, True,
                           partial(lm_closing, task=PRETRAIN)),
    "classify": MethodKind(ClassifyMethod, answering_dtype_autocast, False, classify_closing),
    "image_classify": MethodKind(ImageClassifyMethod, answering_dtype_autocast, False, image_closing),
    "grpo": MethodKind(GRPOMethod, lm_autocast, False, grpo_closing),
    # pairs (DPO, IPO, ORPO, SimPO) train on N processes like chat (tests/train/test_distributed.py); rated
    # replies (KTO) in one: its batch KL estimate is taken over the batch one process sees
    "preference": MethodKind(PreferenceMethod, lm_autocast, True, preference_closing),
    "kto": MethodKind(PreferenceMethod, lm_autocast, False, preference_closing),
}


def method_for(config: RunConfig) -> MethodKind:
    return METHODS[config.task]
