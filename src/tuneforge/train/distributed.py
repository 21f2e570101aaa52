"""Multi-process training: `tuneforge train --nproc N` re-launches itself under N processes.

The launcher is torch.distributed's elastic agent, the engine behind both `torchrun` and
`accelerate launch` on GPUs, called in-process (no shell string): it picks a free port, sets
RANK / WORLD_SIZE / MASTER_ADDR for each worker, streams their output, and stops them all
when one fails.  Each worker runs `python -m tuneforge.cli train ...` with the same arguments,
builds an `accelerate.Accelerator`, which joins the process group (gloo on CPU, nccl on CUDA)
and wraps the model in DDP (or FSDP, `train.distributed: fsdp`, CUDA only).  The same worker
code runs under `accelerate launch -m tuneforge.cli train ...` or `torchrun -m tuneforge.cli
train ...`: nothing in the loop knows which launcher started it.
"""

from __future__ import annotations

import os
import sys
import uuid

from tuneforge.errors import TuneforgeError


class LaunchError(TuneforgeError):
    """A multi-process run that cannot start here (more processes than GPUs, a bad --nproc)."""


def launched() -> bool:
    """True inside a worker of a launcher (torchrun, accelerate launch, --nproc): do not launch again."""
    return "LOCAL_RANK" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Rank 0, or a plain single process; known before any process group exists (for printing)."""
    return os.environ.get("RANK", "0") == "0"


def check_processes(nproc: int) -> None:
    import torch

    if nproc < 1:
        raise LaunchError(f"--nproc {nproc}: need at least one process")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and nproc > gpus:
        raise LaunchError(
            f"--nproc {nproc} needs {nproc} GPUs (one process per GPU, nccl), but this machine has {gpus}; "
            f"use --nproc {gpus} or fewer"
        )


def worker_threads(nproc: int) -> int:
    """Threads per worker on CPU: the cores shared out, so N processes do not fight over them."""
    return max(1, (os.cpu_count() or 1) // nproc)


def launch(argv: list[str], nproc: int) -> int:
    """Run `python -m tuneforge.cli *argv` in `nproc` local processes; their exit status (rank 0's on failure).

    The workers run in sessions of their own; the elastic agent forwards Ctrl-C (SIGINT) or SIGTERM to
    them once, they finish their step and save one checkpoint together (as a single process does), and
    the agent waits up to 10 minutes for that before it kills them.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    check_processes(nproc)
    os.environ.setdefault("OMP_NUM_THREADS", str(worker_threads(nproc)))  # the workers inherit it
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
        rdzv_backend="c10d", rdzv_endpoint="localhost:0",  # torchrun --standalone: a free port on this machine
        max_restarts=0, monitor_interval=0.5, shutdown_timeout=600,
    )
    try:
        elastic_launch(config, sys.executable)("-u", "-m", "tuneforge.cli", *argv)
    except ChildFailedError as failure:
        chosen = failure.failures.get(0) or min(failure.failures.values(), key=lambda f: f.timestamp)
        return chosen.exitcode if chosen.exitcode > 0 else 1  # a negative exit code is a signal
    except SignalException as stopped:  # the workers have stopped and saved by now
        return 128 + int(stopped.sigval)
    return 0


def make_accelerator(strategy: str, bf16: bool):
    """The Accelerator of this process: DDP with several processes (or FSDP when asked); bf16 autocast when
    the method asks for it (train/methods/: per method, from the run file's model.dtype and the hardware).

    accelerate shards with FSDP only across GPUs (on CPU it would quietly replicate instead), so FSDP on a
    machine without CUDA is refused here rather than silently run as DDP.
    """
    from datetime import timedelta

    import torch
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    use_cuda = torch.cuda.is_available()
    fsdp = strategy == "fsdp" or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if fsdp and not use_cuda:
        raise LaunchError(
            "train.distributed: fsdp needs CUDA GPUs: accelerate shards a model with FSDP only across GPUs "
            "(nccl), and on CPU would run plain DDP instead; use train.distributed: ddp on CPU"
        )
    plugin = None
    if strategy == "fsdp":
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="transformer_based_wrap", reshard_after_forward=True,
            state_dict_type="FULL_STATE_DICT",
        )
    # Rank 0 alone generates the base model's answers before training while the others wait at a
    # barrier: allow that an hour or two, not the default 30 minutes.
    patience = InitProcessGroupKwargs(timeout=timedelta(hours=2))
    # One process may train several runs in turn (a search's trials, the tests) whose methods train at
    # different precisions; accelerate keeps one state per process and refuses a second precision, so a
    # finished run's state is dropped (the process group, in PartialState, stays).
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    return Accelerator(cpu=not use_cuda, mixed_precision="bf16" if bf16 else "no", fsdp_plugin=plugin,
                       kwargs_handlers=[patience])


def any_rank(accelerator, flag: bool) -> bool:
    """True on every rank when it is true on any (a signal or a stop seen by one process stops them all)."""
    if accelerator.num_processes == 1:
        return flag
    import torch

    return bool(accelerator.reduce(torch.tensor([int(flag)], device=accelerator.device), reduction="sum").item())


def from_main(accelerator, value):
    """Rank 0's `value` on every rank (a picklable object), so decisions taken on it agree."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def full_state_dict(accelerator, model) -> dict | None:
    """The whole model's weights gathered from the FSDP shards (a collective: every rank calls it); None
    without FSDP, where rank 0's copy of the model is already whole."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.FSDP:
        return None
    return accelerator.get_state_dict(model)


def gather_object(items: list, accelerator) -> list:
    """Every rank's `items`, concatenated in rank order, on every rank."""
    from accelerate.utils import gather_object as gather

    return gather(items) if accelerator.num_processes > 1 else items


def rank_share(window: list[list[int]], rank: int, grad_accum: int) -> list[list[int]]:
    """This rank's consecutive `grad_accum` batches of a step's window (fewer, or none, at an epoch's end)."""
    return window[rank * grad_accum : (rank + 1) * grad_accum]


def trains_nothing(batch: dict) -> dict:
    """The batch with no trained token: a rank's stand-in that adds zero to the gradients."""
    import torch

    from tuneforge.data.template import IGNORE

    return {**batch, "labels": torch.full_like(batch["labels"], IGNORE), "replay": torch.zeros_like(batch["replay"])}


def is_fsdp(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP
