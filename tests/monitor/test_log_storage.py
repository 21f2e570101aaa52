"""Issue 22 cases 4 and 5: the request log survives its storage.

A log directory removed (or the file replaced) under a running writer is noticed: the directory and
file are made again, the next records land there, and the gap is counted (reopened, lost, a failure).
And no storage fault can signal the process: nothing is memory-mapped (no WAL -shm), so a truncated or
unusable -shm file, which killed a WAL writer with SIGBUS, is an ordinary non-event.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.monitor.test_requestlog import record, rows, started  # noqa: F401 (a fixture)
from tuneforge.monitor.store import connect


def test_a_removed_log_directory_is_recreated_and_the_gap_counted(tmp_path, started):  # noqa: F811
    path = tmp_path / "logs" / "requests.db"
    request_log = started(path)
    for ident in ("before-1", "before-2"):
        request_log.submit(record(ident))
    assert request_log.flush(10)
    shutil.rmtree(tmp_path / "logs")
    request_log.submit(record("after"))
    assert request_log.flush(10)
    assert [r.id for r in rows(path)] == ["after"]  # the directory and the file were made again
    stats = request_log.snapshot()
    assert (stats.reopened, stats.lost, stats.written) == (1, 2, 3)
    assert stats.failures == 1 and stats.dropped["write_failed"] == 0


def test_a_replaced_log_file_is_reopened(tmp_path, started):  # noqa: F811
    path = tmp_path / "requests.db"
    request_log = started(path)
    request_log.submit(record("first"))
    assert request_log.flush(10)
    os.rename(path, tmp_path / "rotated.db")  # a log rotation moves the file away and starts a new one
    connect(path).close()
    request_log.submit(record("second"))
    assert request_log.flush(10)
    assert [r.id for r in rows(path)] == ["second"]
    assert [r.id for r in rows(tmp_path / "rotated.db")] == ["first"]
    assert request_log.snapshot().reopened == 1


WRITER = """
import sys, time
from tests.monitor.test_requestlog import record
from tuneforge.monitor.requestlog import LogSettings, RequestLog
log = RequestLog(LogSettings(sys.argv[1]))
log.start()
for i in range(40):
    log.submit(record(f"r{i}"))
    log.flush(10)
    print(i, flush=True)
    time.sleep(0.05)
log.close(10)
print("written", log.snapshot().written, flush=True)
"""


def test_a_truncated_shm_file_cannot_kill_the_writer(tmp_path):
    """Truncating the -shm file under a WAL writer killed it with SIGBUS (exit -7); the log maps nothing now."""
    path = tmp_path / "requests.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env, stdout=subprocess.PIPE, text=True,
                             cwd=os.getcwd())
    assert child.stdout.readline().strip() == "0"
    shm = tmp_path / "requests.db-shm"
    for _ in range(10):  # whatever -shm file appears, truncated again and again while the writer runs
        if shm.exists():
            os.truncate(shm, 0)
        time.sleep(0.05)
    output, _ = child.communicate(timeout=60)
    assert child.returncode != -signal.SIGBUS, "the writer died of SIGBUS"
    assert child.returncode == 0 and "written 40" in output
    assert not shm.exists()


def test_an_unusable_shm_path_does_not_stop_the_log(tmp_path, started):  # noqa: F811
    """Case 5 as in the battery, where `chattr +i` made -shm immutable: here a directory sits at that path."""
    path = tmp_path / "requests.db"
    (tmp_path / "requests.db-shm").mkdir()
    request_log = started(path)
    request_log.submit(record("r1"))
    assert request_log.flush(10)
    assert request_log.snapshot().written == 1 and [r.id for r in rows(path)] == ["r1"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("chattr"), reason="chattr +i needs root")
def test_an_immutable_shm_file_does_not_stop_the_log(tmp_path, started):  # noqa: F811
    path = tmp_path / "requests.db"
    shm = tmp_path / "requests.db-shm"
    shm.write_bytes(b"")
    if subprocess.run(["chattr", "+i", str(shm)], capture_output=True).returncode != 0:
        pytest.skip("this filesystem does not support immutable files")
    try:
        request_log = started(path)
        request_log.submit(record("r1"))
        assert request_log.flush(10)
        assert request_log.snapshot().written == 1
    finally:
        subprocess.run(["chattr", "-i", str(shm)], check=True)


def test_a_log_left_in_wal_mode_is_switched_to_the_rollback_journal(tmp_path, started):  # noqa: F811
    import sqlite3

    path = tmp_path / "requests.db"
    old = sqlite3.connect(path)  # as an older tuneforge wrote it
    assert old.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
    old.close()
    request_log = started(path)
    request_log.submit(record("r1"))
    assert request_log.flush(10) and request_log.snapshot().written == 1
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    check.close()
    assert not (tmp_path / "requests.db-shm").exists() and not (tmp_path / "requests.db-wal").exists()
