"""How fast does tuneforge fine-tune an image classifier, and in how much memory, beside a plain timm + PyTorch loop?

One invocation draws the shapes set (tuneforge.data.shapes, seeded: --per-class images of each of 5
classes, 64 px) and trains the same model on it twice, each in a fresh child process:

- tuneforge: `tuneforge.train.driver.train` on a `task: image_classify` run file (the embedded
  EfficientNet-Lite0, method full, no validation or test split, no periodic checkpoints; the final
  save comes after the timed steps);
- baseline: the loop a careful user writes with timm and PyTorch alone: `timm.create_model
  ("efficientnet_lite0")` with the same ImageNet weights (loaded through tuneforge's key map: the
  weights are not what is timed) and a new 5-class head, torchvision's `ImageFolder` with timm's
  `create_transform` (the same training augmentation: random resized crop, flip, colour jitter), a
  `DataLoader` (shuffled, the same batch size, 0 workers as tuneforge decodes in its process), AdamW
  with the same learning rate and weight decay, gradient-norm clipping at 1.0, cross-entropy.

Both at the same input size, batch size, step count and torch thread count, in float32 on a CPU.
Measured in each child: the time at the end of every optimizer step; images/s is the images of steps
4..N over the time from the end of step 3 to the end of step N (steps 1-3 warm up).  Peak RSS is the
child's ru_maxrss (imports, model and data loading included).  The children alternate for --rounds
rounds; each row is the median round by images/s, every round's figure printed beside it, and the
ratio of the best rounds too (on a CPU shared with other work, each trainer's least disturbed round).

    python bench/image_speed.py                       # 30 steps, batch 16, 96 px, 1 round
    python bench/image_speed.py --rounds 3 --steps 40 --size 128
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLASSES = 5


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def speed(times: list[float], batch: int) -> float:
    """Images/s of steps 4..N: (N - 3) batches over the time from the end of step 3 to the end of step N."""
    return (len(times) - 3) * batch / (times[-1] - times[2])


def run_tuneforge(args) -> dict:
    import yaml
    from rich.console import Console

    from tuneforge.config import load_config
    from tuneforge.train.driver import train

    raw = {"task": "image_classify", "data": {"train": str(args.data)}, "method": "full",
           "image": {"image_size": args.size},
           "train": {"learning_rate": 1e-3, "max_steps": args.steps, "batch_size": args.batch, "weight_decay": 0.01,
                     "lr_scheduler": "constant", "max_grad_norm": 1.0},
           "eval": {"batch_size": 64}, "output_dir": str(args.workdir / "tuneforge-run")}
    path = args.workdir / "image.yaml"
    path.write_text(yaml.safe_dump(raw))
    times: list[float] = []
    losses: list[float] = []

    def stop(state) -> bool:
        times.append(time.perf_counter())
        return False

    result = train(load_config(path), overwrite=True, console=Console(quiet=True), stop=stop)
    for line in (result.run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "train_loss" in row:
            losses.append(row["train_loss"])
    return {"images_per_s": speed(times, args.batch), "peak_rss_mb": peak_rss_mb(), "final_loss": losses[-1]}


def run_baseline(args) -> dict:
    import timm
    import torch
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    from tuneforge.models.image_backbone import embedded_lite0

    torch.manual_seed(42)
    model = embedded_lite0()
    model.reset_classifier(CLASSES)
    cfg = resolve_data_config({}, model=model)
    transform = create_transform(input_size=(3, args.size, args.size), is_training=True, scale=(0.5, 1.0), hflip=0.5,
                                 color_jitter=0.2, interpolation=cfg["interpolation"], mean=cfg["mean"], std=cfg["std"])
    loader = torch.utils.data.DataLoader(ImageFolder(args.data / "train", transform=transform), batch_size=args.batch,
                                         shuffle=True, num_workers=0, drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    model.train()
    times, step, loss = [], 0, None
    assert timm  # the model, data config and transforms are timm's
    while step < args.steps:
        for pixels, targets in loader:
            loss = torch.nn.functional.cross_entropy(model(pixels), targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            times.append(time.perf_counter())
            if step == args.steps:
                break
    return {"images_per_s": speed(times, args.batch), "peak_rss_mb": peak_rss_mb(), "final_loss": float(loss)}


def child(args) -> int:
    result = run_tuneforge(args) if args.child == "tuneforge" else run_baseline(args)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=96, help="input size (the images are drawn at 64 px)")
    parser.add_argument("--per-class", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--child", choices=["tuneforge", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    from tuneforge.data.shapes import generate

    with tempfile.TemporaryDirectory() as tmp:
        data = generate(Path(tmp) / "shapes", train_per_class=args.per_class, test_per_class=0)
        runs: dict[str, list[dict]] = {"tuneforge": [], "baseline": []}
        for _ in range(args.rounds):
            for name in runs:
                command = [sys.executable, __file__, "--child", name, "--data", str(data), "--workdir", tmp,
                           "--steps", str(args.steps), "--batch", str(args.batch), "--size", str(args.size)]
                out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
                runs[name].append(json.loads(out.split("RESULT ", 1)[1]))
    print(f"{args.steps} steps of {args.batch} images at {args.size} px, EfficientNet-Lite0 full fine-tune, "
          f"{args.rounds} round(s); median round by images/s")
    print(f"{'trainer':<12}{'images/s':>10}{'peak RSS MB':>13}{'final loss':>12}   rounds (images/s)")
    rows = {}
    for name, results in runs.items():
        row = sorted(results, key=lambda r: r["images_per_s"])[len(results) // 2]
        rows[name] = row
        print(f"{name:<12}{row['images_per_s']:>10.2f}{row['peak_rss_mb']:>13.0f}{row['final_loss']:>12.4f}   "
              + ", ".join(f"{r['images_per_s']:.2f}" for r in results))
    ours, base = rows["tuneforge"], rows["baseline"]
    best = {name: max(r["images_per_s"] for r in results) for name, results in runs.items()}
    print(f"tuneforge / baseline: {ours['images_per_s'] / base['images_per_s']:.2f}x images/s (median rounds), "
          f"{best['tuneforge'] / best['baseline']:.2f}x (best rounds: {best['tuneforge']:.2f} vs "
          f"{best['baseline']:.2f}; on a shared CPU the least disturbed round of each), "
          f"{ours['peak_rss_mb'] / base['peak_rss_mb']:.2f}x peak RSS")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
