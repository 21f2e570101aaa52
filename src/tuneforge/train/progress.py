"""The progress display: a rich bar on a terminal, periodic plain lines in logs and CI."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainProgress:
    def __init__(self, total_steps: int, start_step: int, console: Console, plain_every_s: float = 10.0):
        self.console = console
        self.total = total_steps
        self.plain_every_s = plain_every_s
        self.last_plain = 0.0
        self.started = time.monotonic()
        self.start_step = start_step
        self.bar = None
        if console.is_terminal:
            self.bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  {task.fields[speed]} tok/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
            )
            self.task = self.bar.add_task("train", total=total_steps, completed=start_step, loss="-", speed="-")
            self.bar.start()

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=f"{loss:.4f}", speed=f"{tokens_per_s:,.0f}")
            return
        now = time.monotonic()
        if now - self.last_plain >= self.plain_every_s or step == self.total:
            self.last_plain = now
            done = max(step - self.start_step, 1)
            eta = (now - self.started) / done * (self.total - step)
            self.console.print(
                f"step {step}/{self.total}  loss {loss:.4f}  {tokens_per_s:,.0f} tok/s  ETA {eta / 60:.1f} min"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
