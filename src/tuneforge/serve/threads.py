"""Where a server's torch CPU threads go: all to the thread that runs the model, none to the threads that load it.

PyTorch on Linux parallelises with libgomp, which gives every thread that starts a parallel region a
pool of workers of its own, and stops spin-waiting between parallel regions once the pools' threads
outnumber the cores: each op then wakes its workers through the kernel. A server loads its model on the
main thread and generates on the engine's thread, so both had pools; on the 2-core machine a decode step
of SmolLM2-135M in bf16 took 29.7 ms on the engine's thread against 18.0 ms with the main thread kept
serial (8 rows: 36.4 against 22.6 ms), as fast as decoding on the main thread itself. So the threads that
load (the main thread at start, the registry watcher and the extra-model loader at each swap) run torch
serially, and the engine's or classifier's thread takes the server's thread count when it starts: each
thread's OpenMP thread count is its own once set. bench/engine_speed.py measures the effect.
"""

from __future__ import annotations


def serial() -> None:
    """This thread runs torch ops on itself alone, so it never starts an OpenMP pool beside the engine's."""
    import torch

    torch.set_num_threads(1)


def for_the_engine(requested: int | None) -> int:
    """The threads the model's own thread will take (`requested`, else torch's default: one per core); this
    thread runs serially from now on. Call it on the main thread before loading."""
    import torch

    threads = requested or torch.get_num_threads()
    serial()
    return threads


def take(threads: int | None) -> None:
    """At the start of the thread that runs the model: its share of the cores (None: leave as it is)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
