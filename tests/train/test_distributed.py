"""Multi-process training on CPU (gloo): 2 processes train what 1 process with twice the accumulation trains.

The 2-process runs go through the real entry point (`python -m tuneforge.cli train --nproc 2`, which
re-launches itself under torch.distributed's elastic agent) in a subprocess, with one thread each.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tuneforge.config import load_config
from tuneforge.train import checkpoint as ckpt
from tuneforge.train.distributed import LaunchError, launched
from tuneforge.train.distributed import rank_share, trains_nothing
from tuneforge.train.driver import train
from tuneforge.evaluate.run_metrics import read_metrics
from tests.conftest import chat_records, write_jsonl
from tests.train.test_preference import preference_config  # noqa: F401  (a fixture)

# 20 records in batches of 4: 5 batches an epoch, so with 2 batches a step every third step of an
# epoch has a single batch, and the second process trains a stand-in that adds nothing.
SETTINGS = {
    "lora.dropout": 0.0,  # dropout masks come from each process's own RNG: not comparable across counts
    "train.batch_size": 4,
    "train.lr_scheduler": "constant",
    "train.learning_rate": 5e-3,
    "train.max_steps": 5,
    "train.preflight": "off",
    "checkpoint.every_steps": 100,
    "eval.general_check": False,
}


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "tuneforge.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def curve(run_dir) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(run_dir) if "train_loss" in r}


def assert_same_curve(got: dict[int, dict], expected: dict[int, dict]) -> None:
    assert list(got) == list(expected)
    for step, record in expected.items():
        assert got[step]["train_loss"] == pytest.approx(record["train_loss"], abs=1e-4), step
        assert got[step]["train_grad_norm"] == pytest.approx(record["train_grad_norm"], abs=1e-4), step
        assert got[step]["train_epoch"] == pytest.approx(record["train_epoch"]), step


@pytest.fixture
def twenty_records(run_config, tmp_path):
    def write(**overrides):
        path = run_config(**{**SETTINGS, **overrides})
        write_jsonl(tmp_path / "train.jsonl", chat_records(20))  # run_config wrote 24: keep 20
        return path

    return write


def test_two_processes_train_like_one_with_twice_the_accumulation(twenty_records, tmp_path, one_thread):
    single = train(load_config(twenty_records(**{"train.grad_accum": 2}, output_dir=str(tmp_path / "one"))))
    path = twenty_records(**{"train.grad_accum": 1}, output_dir=str(tmp_path / "two"))
    done = cli("train", str(path), "--nproc", "2")
    assert done.returncode == 0, done.stderr[-3000:]

    two = tmp_path / "two"
    assert_same_curve(curve(two), curve(single.run_dir))
    assert len(curve(two)) == 5 and curve(two)[3]["train_epoch"] == pytest.approx(1.0)  # step 3 had one batch
    tokens = [r["train_tokens_per_s"] > 0 for r in curve(two).values()]
    assert all(tokens)
    # Only rank 0 wrote: one metrics line per step, and the same final adapter as the single process.
    assert [r["step"] for r in read_metrics(two) if "train_loss" in r] == [1, 2, 3, 4, 5]
    from safetensors.torch import load_file

    one_adapter = load_file(single.run_dir / "final" / "adapter_model.safetensors")
    two_adapter = load_file(two / "final" / "adapter_model.safetensors")
    for name, value in one_adapter.items():
        torch.testing.assert_close(two_adapter[name], value, atol=1e-5, rtol=1e-4)
    assert done.stdout.count("done: 5 steps") + done.stderr.count("done: 5 steps") == 1  # printed by rank 0 only


def test_accelerate_launch_runs_the_same_training(twenty_records, tmp_path, one_thread):
    single = train(load_config(twenty_records(**{"train.grad_accum": 2}, output_dir=str(tmp_path / "one"))))
    path = twenty_records(**{"train.grad_accum": 1}, output_dir=str(tmp_path / "accelerate"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "-m", "tuneforge.cli", "train", str(path)], env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_curve(curve(tmp_path / "accelerate"), curve(single.run_dir))  # accelerate's own launcher


def test_checkpoint_of_two_processes_resumes_on_one(twenty_records, tmp_path, one_thread):
    reference = train(load_config(twenty_records(**{"train.grad_accum": 2}, output_dir=str(tmp_path / "reference"))))
    path = twenty_records(**{"train.grad_accum": 1, "train.max_steps": 2}, output_dir=str(tmp_path / "moved"))
    done = cli("train", str(path), "--nproc", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = ckpt.latest_checkpoint(tmp_path / "moved")
    assert ckpt.read_state(checkpoint).batch_in_epoch == 4  # two steps of two batches each
    assert len(torch.load(checkpoint / "rng.pt", weights_only=False)) == 2  # one RNG state per rank

    resumed = train(load_config(twenty_records(**{"train.grad_accum": 2}, output_dir=str(tmp_path / "moved"))),
                    resume=True)
    assert resumed.state.step == 5
    assert_same_curve(curve(tmp_path / "moved"), curve(reference.run_dir))


def test_a_failing_worker_fails_the_launch_with_its_exit_status(twenty_records, tmp_path):
    path = twenty_records(output_dir=str(tmp_path / "taken"))
    (tmp_path / "taken" / "checkpoints").mkdir(parents=True)
    done = cli("train", str(path), "--nproc", "2", timeout=180)
    assert done.returncode == 2
    assert "already holds a run" in done.stderr


def test_stand_in_batch_trains_nothing(tiny_model, chatml_tokenizer):
    from tuneforge.data.batching import collate
    from tuneforge.data.records import Message, Record
    from tuneforge.data.template import tokenize_example
    from tuneforge.models.load import load_causal_lm
    from tuneforge.train.loss import loss_sum

    model = load_causal_lm(tiny_model, torch.float32)
    record = Record((Message("user", "Hi"), Message("assistant", "Hello there.")), "test")
    eos = chatml_tokenizer.convert_tokens_to_ids("<|im_end|>")
    example = tokenize_example(record, chatml_tokenizer, [eos])
    assert any(label != -100 for label in example.labels)
    batch = trains_nothing(collate([example], chatml_tokenizer.pad_token_id))
    cross_entropy, kl = loss_sum(model, batch, 0.0, None, chunked=True)
    (cross_entropy + kl).backward()
    assert cross_entropy.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_each_rank_takes_its_consecutive_share_of_a_window():
    window = [[0], [1], [2], [3], [4]]
    assert rank_share(window, 0, 2) == [[0], [1]]
    assert rank_share(window, 2, 2) == [[4]]
    assert rank_share(window[:1], 1, 1) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="FSDP runs on CUDA")
def test_fsdp_without_cuda_is_refused_with_the_reason(run_config):
    config = load_config(run_config(**{"train.distributed": "fsdp", "train.max_steps": 1}))
    with pytest.raises(LaunchError, match="fsdp needs CUDA"):
        train(config)
    assert not launched()  # a plain test process is no launcher's worker


def test_dpo_on_two_processes_trains_like_one_with_twice_the_accumulation(preference_config, tmp_path, one_thread):
    """Pairs are summed per rank and divided by the global count like tokens: the same curve, the same adapter."""
    settings = {"lora.dropout": 0.0, "train.lr_scheduler": "constant", "train.max_steps": 3,
                "checkpoint.every_steps": 100, "train.batch_size": 2}
    single = train(preference_config(**settings, **{"train.grad_accum": 2}, output_dir=str(tmp_path / "one")))
    config = preference_config(**settings, **{"train.grad_accum": 1}, output_dir=str(tmp_path / "two"))
    done = cli("train", str(tmp_path / "run.yaml"), "--nproc", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_curve(curve(config.output_dir), curve(single.run_dir))
    for key in ("train_reward_accuracy", "train_margin", "train_chosen_logp", "train_kl"):
        assert [r[key] for r in curve(config.output_dir).values()] == pytest.approx(
            [r[key] for r in curve(single.run_dir).values()], abs=1e-4)
