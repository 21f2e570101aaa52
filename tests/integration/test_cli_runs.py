"""Whole runs through the real `tuneforge` entry point, in subprocesses, on the tiny random model."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tuneforge.cli import main
from tuneforge.models.generate import Sampling, generate_replies
from tuneforge.models.load import load_for_inference
from tuneforge.evaluate.run_metrics import read_metrics


def run_cli(*args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "tuneforge", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def wait_for(path, process, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, f"training ended before {path} appeared:\n{process.stdout.read()}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


LONG_RUN = {"train.epochs": 40, "checkpoint.every_steps": 20, "lora.dropout": 0.1, "eval.every_steps": 50}


def final_loss(run_dir):
    return [r["train_loss"] for r in read_metrics(run_dir) if "train_loss" in r]


def test_sigkill_mid_run_then_resume_ends_at_the_uninterrupted_loss(run_config, tmp_path):
    reference = run_config(**LONG_RUN, output_dir=str(tmp_path / "reference"))
    assert main(["train", str(reference)]) == 0

    config = run_config(**LONG_RUN, output_dir=str(tmp_path / "killed"))
    process = run_cli("train", str(config))
    wait_for(tmp_path / "killed" / "checkpoints" / "latest", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = len(final_loss(tmp_path / "killed"))
    assert killed_at < 240, "the run finished before it was killed"

    resumed = run_cli("train", str(config), "--resume")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert "resuming from" in output
    expected, got = final_loss(tmp_path / "reference"), final_loss(tmp_path / "killed")
    assert len(got) == len(expected)
    assert got == pytest.approx(expected, abs=1e-5)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(run_config, tmp_path):
    config = run_config(**LONG_RUN)
    process = run_cli("train", str(config))
    wait_for(tmp_path / "run" / "checkpoints" / "latest", process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output
    assert "stopped by SIGTERM" in output and "--resume" in output
    assert "Traceback" not in output
    steps = [r["step"] for r in read_metrics(tmp_path / "run") if "train_loss" in r]
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    assert latest == f"step-{steps[-1]:06d}"  # the checkpoint is the last step taken


def test_generate_and_chat_from_a_run_directory(run_config, tmp_path, capsys, monkeypatch):
    config = run_config(**{"train.max_steps": 2})
    assert main(["train", str(config)]) == 0
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "run"), "What is 2 plus 2?", "--max-new-tokens", "5"]) == 0
    printed = capsys.readouterr().out
    model, tokenizer = load_for_inference(str(tmp_path / "run"))
    [expected] = generate_replies(model, tokenizer, [[{"role": "user", "content": "What is 2 plus 2?"}]],
                                  Sampling(max_new_tokens=5))
    assert printed.endswith("\n") and printed.strip() == expected  # streamed text == batched greedy reply

    typed = iter(["Hello", "What is 3 plus 3?", "/exit"])
    monkeypatch.setattr("rich.console.Console.input", lambda self, prompt="": next(typed))
    seen = []
    import tuneforge.chat as chat

    real_stream = chat.stream_to

    def recording_stream(out, model, tokenizer, messages, sampling):
        seen.append([m["content"] for m in messages])
        return real_stream(out, model, tokenizer, messages, sampling)

    monkeypatch.setattr(chat, "stream_to", recording_stream)
    assert main(["chat", str(tmp_path / "run"), "--max-new-tokens", "4"]) == 0
    assert len(seen) == 2
    assert seen[1][0] == "Hello" and seen[1][2] == "What is 3 plus 3?"  # the conversation is kept


def test_misspelled_key_fails_fast_through_the_entry_point(run_config):
    path = run_config(**{"train.lerning_rate": 1e-3})
    started = time.monotonic()
    process = run_cli("train", str(path))
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "lerning_rate" in output and "learning_rate" in output
    print(f"config error reported in {time.monotonic() - started:.2f}s")
