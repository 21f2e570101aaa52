"""Build what the loop trains: the model (full or wrapped in a LoRA adapter), optimizer and schedule."""

from __future__ import annotations

import importlib.util
import math
import random
from pathlib import Path

import numpy as np
import torch

from tuneforge.config import RunConfig, TrainConfig
from tuneforge.models.load import ModelInfo, load_causal_lm, saved_fine_tune, trains_under_autocast, training_dtype
from tuneforge.models.quantize import four_bit_config
from tuneforge.models.resolve import resolve
from tuneforge.train.allocator import return_freed_memory
from tuneforge.train.dropout import fold_lora_dropout
from tuneforge.train.mixed_precision import for_bf16_autocast


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(config: RunConfig, device: torch.device, checkpoint: Path | None):
    """(model, info, the directory of the weights it starts from); from `checkpoint/model` when resuming.

    The start is the base model, or with `model.init_from` another fine-tune's weights: its adapter
    loaded on the base and trained further, or its full weights.  The returned directory keys the
    cache of the starting model's answers (models/answer_cache.py), so it must name what answers.

    Where bf16 is native (CUDA, or a CPU with AVX512-BF16 or AMX), full fine-tuning keeps fp32 master
    weights (bf16 comes from autocast); LoRA keeps the frozen base in bf16 to halve its memory while
    peft keeps adapters in fp32, and
    QLoRA (model.quantize: 4bit) keeps it in 4-bit NF4, a quarter of bf16.
    """
    if device.type == "cpu":
        if config.train.return_freed_memory:
            return_freed_memory()  # lower peak RSS, slower steps: see train/allocator.py
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
    base_dir = resolve(config.model.name)
    start = saved_fine_tune(config.model.init_from)[0] if config.model.init_from else None
    info = ModelInfo(base_model=config.model.name, method=config.method)
    dtype = training_dtype(config.model.dtype, device)
    if config.method == "full":
        source = checkpoint / "model" if checkpoint else start or base_dir
        model = load_causal_lm(source, torch.float32 if config.model.dtype == "auto" else dtype)
        model = with_fused_kernels(model, device, config.train.fused_kernels)
        model.requires_grad_(True)
        return with_training_wrappers(model, config, device), info, start or base_dir
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    if config.model.quantize:
        on_gpu = device if device.index is not None else torch.device("cuda", torch.cuda.current_device())
        base = load_causal_lm(base_dir, dtype, four_bit_config(dtype), on_gpu)
        # fp32 norms and input gradients for the frozen 4-bit base; checkpointing is with_checkpointing's job.
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    else:
        base = with_fused_kernels(load_causal_lm(base_dir, dtype), device, config.train.fused_kernels)
    if checkpoint:
        model = PeftModel.from_pretrained(base, checkpoint / "model", is_trainable=True)
    elif start:
        model = PeftModel.from_pretrained(base, start, is_trainable=True)
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
    if device.type == "cpu":
        fold_lora_dropout(model)
    return with_training_wrappers(model, config, device), info, start or base_dir


def with_training_wrappers(model, config: RunConfig, device: torch.device):
    """The training-time adjustments that do not change the weights: cheaper bf16-autocast paths,
    activation checkpointing, compilation."""
    if trains_under_autocast(config.model.dtype, device):
        model = for_bf16_autocast(model, device)
    train = config.train
    return with_compiled_layers(with_checkpointing(model, train.gradient_checkpointing), train.compile)


def with_compiled_layers(model, enabled: bool):
    """torch.compile each decoder layer in place ("regional" compilation): the layers share one code
    object, so it compiles once (dynamic shapes: batches differ in length) and the model keeps its
    structure for PEFT, checkpoints and generation."""
    if enabled:
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        for layer in inner.get_decoder().layers:
            layer.compile(dynamic=True)
    return model


def with_fused_kernels(model, device: torch.device, enabled: bool):
    """Liger's Triton kernels for RMSNorm, SwiGLU and RoPE, patched into the loaded model, on CUDA when the
    `liger-kernel` package is installed (Triton has no CPU backend).  Its cross-entropy kernels stay off:
    train/loss.py's chunked loss already keeps the full logits out of memory."""
    if not enabled or device.type != "cuda" or importlib.util.find_spec("liger_kernel") is None:
        return model
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)
    return model


def with_checkpointing(model, enabled: bool):
    """Recompute each layer's activations in backward instead of keeping them (non-reentrant, so frozen
    inputs under LoRA need no requires_grad trick)."""
    if enabled:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


def build_optimizer(model, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norm weights (1-D parameters), as is standard.

    The fused implementation (one kernel over all parameters, on CPU and CUDA; TRL's default too) does
    the per-tensor loop's arithmetic in a few launches: on a GPU, where a LoRA step of a small model is
    bound by kernel launches, that matters (bench/RESULTS.md); on the CPU the optimizer is ~1% of a step.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.learning_rate, fused=True)


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
