"""Pre-flight: the peak memory a run will need and the time an epoch will take, known before its first step.

A run that cannot fit should fail in seconds with advice, not after the model, the data and the
base model's answers are ready, or half an hour in, at the epoch's longest batch.  The peak of
one process is estimated as

    baseline      what the process holds now: weights, data, libraries (RSS on CPU, allocated on CUDA)
  + gradients     one per trainable parameter (allocated at the first backward)
  + optimizer     AdamW's two moments per trainable parameter (allocated at the first step)
  + DDP buckets   with several processes, DDP keeps a flat copy of the gradients to all-reduce
  + activations   the tensors autograd keeps for backward, for batch_size rows of the longest
                  training unit (length-grouped batches pad to it, so the worst batch is that wide);
                  measured, not modelled: one probe forward of the real model and loss on that
                  unit, counting the saved tensors' storage (saved_tensors_hooks), times batch_size.
                  With gradient checkpointing, plus one layer recomputed in backward.
  + loss logits   the copies of the LM head's fp32 logits that exist only for a moment (slices,
                  casts, gradients): of one chunk of CHUNK_TOKENS trained positions with the chunked
                  loss; of the whole batch without it, and more of them with the KL term (tuned and
                  base log-probabilities of replay rows): LOGIT_COPIES
  x slack         activations and logits cost a little more than their bytes: the transients inside
                  a layer, and on CPU the blocks glibc keeps in its heap after freeing them.

Calibrated on SmolLM2-135M, LoRA r16, fp32, 2-core CPU, batch 8 (peak RSS of the run, ru_maxrss):
  quickstart (replay + KL, 8 x 187 tokens):    estimate 8.65 GB, measured 7.33 GB (whole run, 102 steps;
                                               8.19 GB before train/allocator.py fixed glibc's threshold)
  quickstart without replay and KL (8 x 120):  estimate 3.86 GB, measured 3.63 GB (one epoch)
LOGIT_COPIES follows train/loss.py: a loss that makes fewer copies of the logits needs smaller numbers.

The probe and the warm-up run on this process's model before accelerate wraps it, in a forked
RNG, and the warm-up's gradients are dropped: the run trains exactly as it would without them
(tests/train/test_preflight.py compares the loss curves).  The warm-up is one forward + backward
of the first micro-batch the run will train; its time, scaled by the padded tokens of an epoch,
gives the time per epoch.  It leaves out the optimizer update, evaluation and checkpoints; the
first call's overheads push it up, a first batch cheaper than most (no replay rows) pushes it down
(quickstart without replay: estimated 44 s per step, measured 36 s on a busy 2-core machine).
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tuneforge.data.batching import epoch_batches
from tuneforge.errors import TuneforgeError
from tuneforge.files import write_atomic
from tuneforge.train.distributed import any_rank, gather_object, is_fsdp, rank_share
from tuneforge.models.token_loss import CHUNK_TOKENS

PREFLIGHT_FILE = "preflight.json"
GIB = 1024**3
# Bytes at the peak per byte of saved activations and logits (see the module docstring for the runs).
SLACK = 1.1
# Transient copies of the logits: chunked loss (one chunk: logits, probabilities, gradient), the plain
# cross-entropy (logits, shifted copy, two gradients), and that plus the KL term's tuned/base log-probs.
LOGIT_COPIES = {"chunked": 3, "plain": 4, "kl": 9}


class PreflightError(TuneforgeError):
    """The run's estimated peak memory exceeds what the device has free."""


@dataclass
class MemoryEstimate:
    device: str  # "cpu" or "cuda"
    baseline: int  # bytes held by the process now (weights included)
    weights: int  # of which the model's parameters and buffers
    gradients: int
    optimizer: int
    ddp_buckets: int
    activations: int  # saved for backward, batch_size rows of the longest unit, slack included
    loss_logits: int  # transient logits of the loss, slack included
    activation_bytes_per_token: float  # saved bytes per token of the probe row, as measured
    rows: int
    longest: int
    processes_per_host: int = 1  # processes sharing this memory (CPU ranks share RAM)
    weight_copies: int = 0  # autocast's low-precision weight copies kept for backward (not per row)

    @property
    def peak(self) -> int:
        return (self.baseline + self.gradients + self.optimizer + self.ddp_buckets + self.activations
                + self.weight_copies + self.loss_logits)

    @property
    def growth(self) -> int:
        """What training adds to the process on top of what it holds now."""
        return self.peak - self.baseline

    def with_rows(self, rows: int) -> MemoryEstimate:
        """The same run with another batch_size (activations and logits scale with the rows)."""
        scale = rows / self.rows
        return MemoryEstimate(**{**asdict(self), "rows": rows, "activations": int(self.activations * scale),
                                 "loss_logits": int(self.loss_logits * scale)})


@dataclass
class TimeEstimate:
    warmup_seconds: float  # one forward + backward of the first micro-batch
    warmup_tokens: int  # its padded tokens
    seconds_per_step: float
    seconds_per_epoch: float
    steps_per_epoch: float


@dataclass
class Preflight:
    memory: MemoryEstimate
    available: int  # bytes free on the device when the estimate was made
    time: TimeEstimate | None = None
    measured: dict = field(default_factory=dict)  # filled in at the end of training

    def write(self, run_dir: Path) -> None:
        record = {"memory": {**asdict(self.memory), "peak": self.memory.peak}, "available": self.available,
                  "time": asdict(self.time) if self.time else None, "measured": self.measured}
        write_atomic(run_dir / PREFLIGHT_FILE, json.dumps(record, indent=2) + "\n")


# --- memory --------------------------------------------------------------------------------------------


def process_memory(device: torch.device) -> int:
    """Bytes the process holds now on the training device."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    import psutil  # accelerate's own dependency

    return psutil.Process().memory_info().rss


def available_memory(device: torch.device) -> int:
    """Bytes training may still take: free RAM (MemAvailable), or free GPU memory plus the allocator's spare."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    import psutil

    return psutil.virtual_memory().available


def peak_memory(device: torch.device) -> int:
    """The process's peak so far: ru_maxrss on CPU (the whole process's life), max allocated on CUDA."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


@dataclass
class SavedBytes:
    activations: int  # grow with the rows of a batch
    weight_copies: int  # autocast's low-precision copies of weights: once per forward, whatever the rows


def saved_tensor_bytes(model, run: Callable[[], object]) -> SavedBytes:
    """Storage bytes of the tensors autograd saves for backward while `run()` executes (weights excluded).

    Storages are counted once however many tensors view them (q, k and v projections save the same input).
    Under autocast (bf16 on CUDA) a matmul saves its bf16 copy of an fp32 weight: that copy is made once
    per forward, not per row, so it is counted apart (measured on an H200: counting it per row put a full
    fine-tune's estimate at 2.1x its peak). The graph is dropped on return, so nothing stays allocated.
    """
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    weight_dtypes: dict[tuple[int, ...], set[torch.dtype]] = {}
    for parameter in model.parameters():
        weight_dtypes.setdefault(tuple(parameter.shape), set()).add(parameter.dtype)
    activations: dict[int, int] = {}
    copies: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            kind = copies if is_weight_copy(tensor, weight_dtypes) else activations
            kind[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return SavedBytes(sum(activations.values()), sum(copies.values()))


def is_weight_copy(tensor: torch.Tensor, weight_dtypes: dict[tuple[int, ...], set[torch.dtype]]) -> bool:
    """A cast of a parameter: of a trainable one, autograd shows it (view ops, then a copy of a leaf);
    of a frozen one, it has a weight's shape (or its transpose) in another dtype than that weight."""
    fn, depth = tensor.grad_fn, 0
    if fn is not None:
        while fn is not None and depth < 4:
            if type(fn).__name__ == "ToCopyBackward0":
                return any(type(n).__name__ == "AccumulateGrad" for n, _ in fn.next_functions if n is not None)
            following = [n for n, _ in fn.next_functions if n is not None]
            fn, depth = (following[0] if len(following) == 1 else None), depth + 1
        return False
    shape = tuple(tensor.shape)
    return any(tensor.dtype not in weight_dtypes.get(s, {tensor.dtype}) for s in (shape, shape[::-1]) if s in weight_dtypes)


@contextmanager
def checkpointing_off(model):
    """The model's layers without activation checkpointing, for measuring what one layer recomputes."""
    layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for layer in layers:
        layer.gradient_checkpointing = False
    try:
        yield bool(layers)
    finally:
        for layer in layers:
            layer.gradient_checkpointing = True


def estimate_memory(
    model, probe_row: dict[str, torch.Tensor], loss: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    rows: int, device: torch.device, chunked: bool, kl_rows: bool, processes: int, processes_per_host: int,
    sharded: bool = False,
) -> MemoryEstimate:
    """The peak memory of training `rows` rows as wide as `probe_row` (one row: the longest training unit).

    `loss(batch)` is the training loss of a batch, as the loop computes it; `kl_rows`: replay rows take the
    KL-to-base path, which keeps the whole batch's logits.  `sharded` (FSDP): each of the processes keeps
    its share of the gradients and optimizer state (the baseline still holds the whole model, as loaded).
    """
    device_type = "cuda" if device.type == "cuda" else "cpu"
    longest = int(probe_row["input_ids"].shape[1])
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        saved = saved_tensor_bytes(model, lambda: loss(probe_row))
        with checkpointing_off(model) as was_on:
            unchecked = saved_tensor_bytes(model, lambda: loss(probe_row)) if was_on else SavedBytes(0, 0)
        recomputed = unchecked.activations / layer_count(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainable_bytes = sum(p.numel() * p.element_size() for p in trainable)  # AdamW's moments take the same
    trainable_bytes //= processes if sharded else 1
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    vocabulary = model.get_output_embeddings().weight.shape[0]
    if chunked and not kl_rows:
        logit_positions = min(int((probe_row["labels"] != -100).sum()) * rows, CHUNK_TOKENS)
        copies = LOGIT_COPIES["chunked"]
    else:
        logit_positions = rows * longest
        copies = LOGIT_COPIES["kl" if kl_rows else "plain"]
    return MemoryEstimate(
        device=device_type,
        baseline=process_memory(device),
        weights=weights,
        gradients=trainable_bytes,
        optimizer=2 * trainable_bytes,
        ddp_buckets=trainable_bytes if processes > 1 and not sharded else 0,
        activations=int((saved.activations + recomputed) * rows * SLACK),
        weight_copies=int(max(saved.weight_copies, unchecked.weight_copies) * SLACK),
        loss_logits=int(logit_positions * vocabulary * 4 * copies * SLACK),
        activation_bytes_per_token=saved.activations / longest,
        rows=rows,
        longest=longest,
        processes_per_host=processes_per_host,
    )


def layer_count(model) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return max(1, int(getattr(config, "num_hidden_layers", 1)))


def describe_memory(estimate: MemoryEstimate) -> str:
    parts = [("now", estimate.baseline), ("gradients", estimate.gradients), ("optimizer", estimate.optimizer),
             ("DDP buckets", estimate.ddp_buckets),
             (f"activations for {estimate.rows} x {estimate.longest} tokens", estimate.activations),
             ("autocast weight copies", estimate.weight_copies), ("loss logits", estimate.loss_logits)]
    return f"{estimate.peak / GIB:.2f} GiB (" + ", ".join(f"{name} {size / GIB:.2f}" for name, size in parts if size) + ")"


def check_fits(estimate: MemoryEstimate, available: int, advice: list[str]) -> str | None:
    """None when the run fits, else the refusal with what to change."""
    need = estimate.growth * estimate.processes_per_host
    if need <= available:
        return None
    rows = estimate.rows
    while rows > 1 and estimate.with_rows(rows).growth * estimate.processes_per_host > available:
        rows //= 2
    hints = list(advice)
    if rows < estimate.rows and estimate.with_rows(rows).growth * estimate.processes_per_host <= available:
        hints.insert(0, f"train.batch_size: {rows} (estimated peak {estimate.with_rows(rows).peak / GIB:.2f} GiB), "
                        f"with train.grad_accum x{estimate.rows // rows} to keep the same batch per step")
    sharing = f" x {estimate.processes_per_host} processes" if estimate.processes_per_host > 1 else ""
    where = "GPU memory" if estimate.device == "cuda" else "RAM"
    return (f"this run needs about {describe_memory(estimate)}{sharing} at its peak, but only "
            f"{available / GIB:.2f} GiB of {where} is free beyond what it holds now. Try: " + "; ".join(hints)
            + ". Set train.preflight: warn to train anyway.")


def advice(method: str, checkpointing: bool, max_seq_length: int, longest: int, cuda: bool, quantized: bool) -> list[str]:
    """What else lowers the peak, for this run's settings."""
    hints = [f"a shorter train.max_seq_length (now {max_seq_length}; the longest example has {longest} tokens)"]
    if method == "full":
        hints.append("method: lora (gradients and optimizer states only for the adapter)")
    if not checkpointing:
        hints.append("train.gradient_checkpointing: true (keeps one layer's activations instead of all)")
    if cuda and not quantized and method == "lora":
        hints.append("model.quantize: 4bit (QLoRA: the frozen base in 4 bits)")
    return hints


# --- the check the loop runs ---------------------------------------------------------------------------


def check(config, model, accelerator, console, lengths: list[int], batch_of, state, plan,
          loss: Callable[[dict[str, torch.Tensor]], torch.Tensor], kl_rows: bool) -> Preflight:
    """Estimate the peak memory (refusing a run that cannot fit) and time a warm-up pass, before the first step.

    `loss` is the method's training loss of one batch (train/method.py composes it); `kl_rows`: the worst
    case makes every row a replay row.  Runs on the bare model before accelerate wraps it, so nothing here
    talks to the other ranks but the final agreement on whether to go on.
    """
    cfg, device = config.train, accelerator.device
    if device.type == "cuda" and config.model.quantize is None:
        model.to(device)  # where accelerate.prepare puts it next: the probe must run where training will
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    probe_row = batch_of([longest])
    if kl_rows:
        probe_row["replay"] = torch.ones_like(probe_row["replay"])  # the worst case: every row a replay row
    local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    model.train()  # dropout and activation checkpointing act only in training mode
    memory = estimate_memory(model, probe_row, loss, cfg.batch_size, device, cfg.chunked_loss, kl_rows,
                             accelerator.num_processes, 1 if device.type == "cuda" else local, is_fsdp(accelerator))
    available = available_memory(device)
    console.print(f"pre-flight: estimated peak memory {describe_memory(memory)} per process; "
                  f"{available / GIB:.2f} GiB free")
    problem = check_fits(memory, available, advice(
        config.method, cfg.gradient_checkpointing, cfg.max_seq_length, memory.longest, device.type == "cuda",
        config.model.quantize is not None))
    if any_rank(accelerator, problem is not None):
        if cfg.preflight == "refuse":
            raise PreflightError(problem or "another process's estimate does not fit in its memory")
        console.print(f"[yellow]warning:[/] {problem or 'another process does not fit in its memory'}")
    order = epoch_batches(lengths, cfg.batch_size, cfg.seed, state.epoch)
    window = order[state.batch_in_epoch : state.batch_in_epoch + plan.batches_per_step]
    batch = batch_of((rank_share(window, accelerator.process_index, cfg.grad_accum) or order)[0])
    seconds = time_one_pass(model, batch, loss, device)
    epoch_tokens = sum(len(b) * max(lengths[i] for i in b) for b in order)
    timing = estimate_time(seconds, batch["input_ids"].numel(), epoch_tokens, plan.batches_per_epoch,
                           plan.batches_per_step, accelerator.num_processes)
    console.print(f"pre-flight: time {describe_time(timing, plan.total_steps - state.step)}")
    return Preflight(memory, available, timing)


def record_peak(plan: Preflight, accelerator, run_dir: Path, tokens: int, started: float) -> None:
    """Write the measured peak (every rank's) and the training time beside the estimate in preflight.json."""
    peaks = gather_object([peak_memory(accelerator.device)], accelerator)
    if accelerator.is_main_process:
        elapsed = time.monotonic() - started
        plan.measured = {"peak": max(peaks), "peak_per_process": peaks,
                         "peak_over_estimate": max(peaks) / plan.memory.peak,
                         "seconds_training": elapsed, "tokens": tokens}
        plan.write(run_dir)


# --- time ----------------------------------------------------------------------------------------------


def time_one_pass(model, batch: dict[str, torch.Tensor], loss: Callable[[dict[str, torch.Tensor]], torch.Tensor],
                  device: torch.device) -> float:
    """Seconds for one forward + backward of `batch`; the gradients are dropped and the RNG left as it was."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        synchronize(device)
        start = time.perf_counter()
        loss(batch).backward()
        synchronize(device)
        elapsed = time.perf_counter() - start
    for parameter in model.parameters():
        parameter.grad = None
    return elapsed


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def estimate_time(seconds: float, batch_tokens: int, epoch_tokens: int, batches_per_epoch: int,
                  batches_per_step: int, processes: int) -> TimeEstimate:
    """Time per step and per epoch from one timed micro-batch, scaled by padded tokens.

    `epoch_tokens` are all processes' padded tokens of an epoch; the processes work in parallel.
    """
    per_token = seconds / max(batch_tokens, 1)
    epoch = per_token * epoch_tokens / processes
    steps = batches_per_epoch / batches_per_step
    return TimeEstimate(seconds, batch_tokens, epoch / steps, epoch, steps)


def describe_time(estimate: TimeEstimate, total_steps: int) -> str:
    return (f"~{minutes(estimate.seconds_per_epoch)} per epoch, {estimate.seconds_per_step:.1f} s per step, "
            f"~{minutes(estimate.seconds_per_step * total_steps)} for {total_steps} steps "
            f"(from one forward + backward of {estimate.warmup_tokens:,} tokens in {estimate.warmup_seconds:.1f} s; "
            "evaluation and checkpoints not included)")


def minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
