"""Issue 22's training cases: one process per run directory, unusable output paths, the model's sequence
limit, damaged checkpoints (verified, skipped, reported), and the mode of saved weights."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

from tuneforge.config import load_config
from tuneforge.errors import ConfigError, RunDirError
from tuneforge.train import checkpoint as ckpt
from tuneforge.train.driver import train
from tuneforge.train.run_dir import LOCK_FILE, check_output_dir, release_run_dir


@pytest.fixture
def run_file(run_config):
    """The tiny run on one CPU thread: these tests run beside others on a shared 2-core machine."""
    return lambda **overrides: run_config(**{"train.threads": 1, "eval.general_check": False, **overrides})


def start_training(config_path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "tuneforge", "train", str(config_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(path, process, timeout_s=180):
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, f"training ended before {path} appeared:\n{process.stdout.read()}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_a_training_run_locks_its_directory_until_it_dies(run_file, tmp_path):
    """Case 1: a second train, --resume or --overwrite on a running run is refused naming its PID; kill -9
    releases the lock (the kernel drops it), and --resume then continues."""
    path = run_file(**{"train.epochs": 400, "checkpoint.every_steps": 2})
    config = load_config(path)
    running = start_training(path)
    try:
        wait_for(config.output_dir / "checkpoints" / "latest", running)
        for kwargs in ({}, {"resume": True}, {"overwrite": True}):
            with pytest.raises(RunDirError, match=f"in use by another tuneforge process \\(PID {running.pid}"):
                train(config, **kwargs)
            assert running.poll() is None, "the refused call disturbed the running training"
        assert (config.output_dir / "checkpoints").is_dir()  # --overwrite deleted nothing
        holder = (config.output_dir / LOCK_FILE).read_text().split()[0]
        assert holder == str(running.pid)
    finally:
        running.send_signal(signal.SIGKILL)
        running.wait()
    resumed = train(load_config(run_file(**{"train.max_steps": 6, "checkpoint.every_steps": 2})), resume=True)
    assert resumed.interrupted_by is None and resumed.state.step >= 6
    release_run_dir(config.output_dir)


def test_overwrite_keeps_the_lock_it_holds(run_file):
    config = load_config(run_file(**{"train.max_steps": 1}))
    train(config)
    assert train(config, overwrite=True).interrupted_by is None
    assert (config.output_dir / LOCK_FILE).read_text().split()[0] == str(os.getpid())
    release_run_dir(config.output_dir)


def test_unusable_output_dirs_are_refused_before_anything_loads(run_file, tmp_path, monkeypatch):
    """Case 7: a file, a path under a file, a read-only filesystem, a name too long: a RunDirError saying so."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cases = {str(blocker): "is a file, not a directory", str(blocker / "run"): "is a file, so no directory",
             str(tmp_path / ("x" * 300)): "longer than the filesystem allows"}
    for output_dir, message in cases.items():
        with pytest.raises(RunDirError, match=message):
            train(load_config(run_file(output_dir=output_dir, **{"model.name": str(tmp_path / "no-model")})))
    real = os.statvfs

    class ReadOnly:
        def __init__(self, path):
            self.f_flag = real(path).f_flag | os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", ReadOnly)
    with pytest.raises(RunDirError, match="read-only filesystem"):
        check_output_dir(tmp_path / "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_directory_without_write_permission_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(RunDirError, match="not writable"):
        check_output_dir(locked / "run")


def test_max_seq_length_beyond_the_models_positions_is_refused(run_file, tmp_path):
    """Case 2: the tiny model has 512 positions; 1e9 is refused naming the key and the limit, before data is read."""
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")  # reading the data first would fail on this line instead
    config = load_config(run_file(**{"train.max_seq_length": 1_000_000_000, "data.train": str(broken)}))
    with pytest.raises(ConfigError, match=r"train\.max_seq_length is 1,000,000,000.*at most 512 tokens"):
        train(config)
    assert train(load_config(run_file(**{"train.max_seq_length": 512, "train.max_steps": 1}))).state.step == 1
    release_run_dir(config.output_dir)


def damage_optimizer(checkpoint):
    path = checkpoint / "optimizer.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def damage_adapter(checkpoint):
    path = checkpoint / "model" / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:100])


def empty_state(checkpoint):
    (checkpoint / "state.json").write_text("")


def test_resume_skips_a_damaged_checkpoint_for_the_newest_intact_one(run_file, tmp_path, capsys):
    """Case 6: a truncated optimizer.pt or adapter, or an empty state.json, in the latest checkpoint: --resume
    says which checkpoint is damaged and why, and continues from the previous one."""
    config = load_config(run_file(**{"train.max_steps": 8, "checkpoint.every_steps": 3}))
    stopped = train(config, stop=lambda state: state.step == 6)
    assert stopped.interrupted_by == "stop"
    release_run_dir(config.output_dir)
    for damage, why in ((damage_optimizer, "optimizer.pt is"), (damage_adapter, "adapter_model.safetensors is"),
                        (empty_state, "state.json is 0 bytes")):
        copy = config.model_copy(update={"output_dir": tmp_path / damage.__name__})
        shutil.copytree(config.output_dir, copy.output_dir)
        latest = ckpt.latest_checkpoint(copy.output_dir)
        assert latest.name == "step-000006" and ckpt.verify_checkpoint(latest) is None
        damage(latest)
        capsys.readouterr()
        resumed = train(copy, resume=True)
        err = capsys.readouterr().err
        assert "step-000006 is damaged" in err and why in err, err
        assert "resuming from step-000003, the newest intact checkpoint" in err
        assert resumed.state.step == 8 and resumed.interrupted_by is None
        assert ckpt.verify_checkpoint(copy.output_dir / "checkpoints" / "step-000006") is None  # saved again, whole
        release_run_dir(copy.output_dir)


def test_checkpoints_without_a_manifest_still_resume_and_all_damaged_is_an_error(run_file, tmp_path):
    config = load_config(run_file(**{"train.max_steps": 8, "checkpoint.every_steps": 3}))
    train(config, stop=lambda state: state.step == 6)
    release_run_dir(config.output_dir)
    for checkpoint in (config.output_dir / "checkpoints").glob("step-*"):
        assert (checkpoint / ckpt.MANIFEST).is_file()
        (checkpoint / ckpt.MANIFEST).unlink()  # as written before manifests existed
    old = config.model_copy(update={"output_dir": tmp_path / "old"})
    shutil.copytree(config.output_dir, old.output_dir)
    assert train(old, resume=True).state.step == 8
    release_run_dir(old.output_dir)
    for checkpoint in (config.output_dir / "checkpoints").glob("step-*"):
        empty_state(checkpoint)
    with pytest.raises(RunDirError, match="no intact checkpoint .*step-000006: state.json is missing or empty"):
        train(config, resume=True)
    release_run_dir(config.output_dir)


def test_saved_weights_get_the_umask_mode_like_every_other_file(run_file):
    """Case 9: safetensors wrote adapter and model weights 0600 while config files were 0644."""
    old = os.umask(0o022)
    try:
        result = train(load_config(run_file(**{"train.max_steps": 3, "checkpoint.every_steps": 3})))
    finally:
        os.umask(old)
    release_run_dir(result.run_dir)
    for directory in (result.run_dir / "final", result.run_dir / "checkpoints" / "step-000003"):
        for path in directory.rglob("*"):
            if path.is_file():
                assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_the_resume_hint_keeps_the_set_overrides(run_file, monkeypatch, capsys):
    """Case 9: the command printed after SIGTERM dropped the --set overrides the run was started with."""
    from tuneforge import cli
    from tuneforge.train import driver

    def stopped_by_sigterm(config, **kwargs):
        return driver.TrainResult(config.output_dir, ckpt.TrainState(step=2), 6, "SIGTERM", None, None)

    monkeypatch.setattr(driver, "train", stopped_by_sigterm)
    path = run_file()
    code = cli.main(["train", str(path), "--set", "train.learning_rate=1e-4", "--set", "eval.gates=[\"f1 >= 0.5\"]"])
    assert code == 143
    err = capsys.readouterr().err
    expected = (f"tuneforge train {path} --set train.learning_rate=1e-4 --set 'eval.gates=[\"f1 >= 0.5\"]' --resume")
    assert expected in err, err
