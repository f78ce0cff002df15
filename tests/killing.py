"""The kill -9 harness of the resume tests (train, scn, elr, pretrain): start a fernoise command
in a process group of its own, wait until its run folder's ``metrics.jsonl`` holds ``epochs``
finished epochs, SIGKILL the whole group (the CLI and any DataLoader worker) in the next one,
then run the same command again and check that it said it resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def kill_after_epochs(
    cmd: list[str], env: dict, out: Path, *, epochs: int = 1, timeout: float = 180
) -> Path:
    """The run folder (``out/<key>``) of ``cmd`` after it was killed mid-epoch ``epochs + 1``."""
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + timeout
    run = None
    try:
        while time.time() < deadline and proc.poll() is None:
            found = list(Path(out).glob("*/metrics.jsonl"))
            if found and found[0].read_text().count("\n") >= epochs:
                run = found[0].parent
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert run is not None, f"epoch {epochs} never finished (exit code {proc.returncode})"
    return run


def resume(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    """Run ``cmd`` again to the end; it must succeed and say it resumed."""
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout
    return done
