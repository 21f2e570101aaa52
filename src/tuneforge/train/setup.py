"""Build what the loop trains: the model (full or wrapped in a LoRA adapter), optimizer and schedule."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch

from tuneforge.config import RunConfig, TrainConfig
from tuneforge.models.load import ModelInfo, load_causal_lm, pick_dtype
from tuneforge.models.resolve import resolve


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(config: RunConfig, device: torch.device, checkpoint: Path | None):
    """(model, info, base model directory); from `checkpoint/model` when resuming.

    On CUDA, full fine-tuning keeps fp32 master weights (bf16 comes from autocast); LoRA
    keeps the frozen base in bf16 to halve its memory while peft keeps adapters in fp32.
    """
    base_dir = resolve(config.model.name)
    info = ModelInfo(base_model=config.model.name, method=config.method)
    dtype = pick_dtype(config.model.dtype, device)
    if config.method == "full":
        source = checkpoint / "model" if checkpoint else base_dir
        model = load_causal_lm(source, torch.float32 if config.model.dtype == "auto" else dtype)
        model.requires_grad_(True)
        return with_checkpointing(model, config.train.gradient_checkpointing), info, base_dir
    from peft import LoraConfig, PeftModel, get_peft_model

    base = load_causal_lm(base_dir, dtype)
    if checkpoint:
        model = PeftModel.from_pretrained(base, checkpoint / "model", is_trainable=True)
    else:
        lora = config.lora
        model = get_peft_model(
            base,
            LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=lora.target_modules,
                task_type="CAUSAL_LM",
            ),
        )
    return with_checkpointing(model, config.train.gradient_checkpointing), info, base_dir


def with_checkpointing(model, enabled: bool):
    """Recompute each layer's activations in backward instead of keeping them (non-reentrant, so frozen
    inputs under LoRA need no requires_grad trick)."""
    if enabled:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


def build_optimizer(model, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norm weights (1-D parameters), as is standard."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.learning_rate)


def total_steps(config: TrainConfig, batches_per_epoch: int) -> int:
    if config.max_steps:
        return config.max_steps
    return max(1, math.ceil(batches_per_epoch * config.epochs / config.grad_accum))


def build_scheduler(optimizer, config: TrainConfig, steps: int):
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    warmup = config.warmup_steps if config.warmup_steps is not None else math.ceil(config.warmup_ratio * steps)
    match config.lr_scheduler:
        case "linear":
            return get_linear_schedule_with_warmup(optimizer, warmup, steps)
        case "cosine":
            return get_cosine_schedule_with_warmup(optimizer, warmup, steps)
        case "constant":
            return get_constant_schedule_with_warmup(optimizer, warmup)
