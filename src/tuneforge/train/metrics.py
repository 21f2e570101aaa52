"""Metrics to `metrics.jsonl` (one JSON object a line, for scripts) and TensorBoard (for people).

On resume, records past the checkpoint's step are dropped from both, so the files hold one
consistent curve rather than the interrupted run's tail followed by its replay.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.evaluate.run_metrics import METRICS_FILE, read_metrics
from tuneforge.files import write_atomic

class MetricsLog:
    def __init__(self, run_dir: Path, resume_step: int | None = None):
        self.path = run_dir / METRICS_FILE
        if resume_step is not None:
            kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= resume_step]
            write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        elif self.path.exists():
            self.path.unlink()
        from torch.utils.tensorboard import SummaryWriter

        purge = resume_step + 1 if resume_step is not None else None
        self.tensorboard = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)
        self.handle = self.path.open("a")

    def log(self, step: int, **values: float) -> None:
        self.handle.write(json.dumps({"step": step, **values}) + "\n")
        self.handle.flush()
        for key, value in values.items():
            self.tensorboard.add_scalar(key.replace("_", "/", 1), value, step)

    def close(self) -> None:
        self.handle.close()
        self.tensorboard.close()


def plot_losses(run_dir: Path) -> Path:
    """loss_curve.png: training loss per step and validation loss at each evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    figure, axis = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        axis.plot(*zip(*train), label="train loss", linewidth=1)
    if val:
        axis.plot(*zip(*val), "o-", label="validation loss")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss")
    axis.set_title(run_dir.name)
    axis.grid(alpha=0.3)
    axis.legend()
    path = run_dir / "loss_curve.png"
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_rewards(run_dir: Path, reward_names: list[str]) -> Path:
    """reward_curves.png (task: grpo): rewards, no-signal share, answer length, clip fraction and KL per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)

    def series(key: str):
        return [(r["step"], r[key]) for r in records if key in r]

    panels = [("reward", ["train_reward", *[f"train_reward_{n}" for n in reward_names], "eval_reward"]),
              ("share", ["train_no_signal_groups", "train_truncated", "train_clip_fraction", "eval_pass_rate"]),
              ("answer tokens", ["train_completion_length"]), ("KL", ["train_kl"])]
    figure, axes = plt.subplots(2, 2, figsize=(10, 6), dpi=110)
    for axis, (label, keys) in zip(axes.flat, panels):
        for key in keys:
            points = series(key)
            if points:
                axis.plot(*zip(*points), "o-" if key.startswith("eval_") else "-", label=key, linewidth=1)
        axis.set_xlabel("optimizer step")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=7)
    figure.suptitle(run_dir.name)
    path = run_dir / "reward_curves.png"
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
