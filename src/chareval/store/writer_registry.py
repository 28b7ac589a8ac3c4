"""Which trace writers are still writing to a store, so that a command waits for those of commands
that have ended before it reads or adds to their traces.

A trace writer (store/trace_writer.py) goes on writing after the command that started it has
exited: that command does not wait for its traces. A later command on the same store must not
attach a verdict to a trace, or mend a resumed run's traces, before they are written; so each
writer holds an exclusive lock on a file of its own beside the SQLite store, `<pid>.lock`, which
names the process it writes for, and lets go of it when it exits. A command waits for the writers
whose process has ended (they are finishing what it sent); the writers of processes still running
(another job of a sweep) keep up with them and are not waited for. Other stores (an MLflow server)
have no such folder: nothing is waited for there."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

FOLDER = ".chareval-trace-writers"
# A writer of an ended command finishes in seconds; one that takes longer than this is stuck (its
# store is locked by someone else) and is not waited for any more.
WAIT_S = 300.0


def writers_folder(uri: str) -> Path | None:
    """The folder of the writers of the SQLite store at `uri`; None for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).parent / FOLDER


def register(uri: str, traced_pid: int) -> IO[bytes] | None:
    """This writer process, writing for `traced_pid`, in the store's folder (the lock held until
    it exits); the open lock file, which must stay open. The file appears already locked (made
    under another name, then renamed), so that no one finds it unlocked and takes it for a stale one."""
    folder = writers_folder(uri)
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    making = folder / f"{os.getpid()}.making"
    handle = open(making, "wb")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(str(traced_pid).encode())
        handle.flush()
        making.rename(folder / f"{os.getpid()}.lock")
    except OSError:  # a full disk: no half-made file left behind
        with contextlib.suppress(OSError):
            handle.close()
        making.unlink(missing_ok=True)
        raise
    return handle


def unregister(uri: str) -> None:
    folder = writers_folder(uri)
    if folder is not None:
        (folder / f"{os.getpid()}.lock").unlink(missing_ok=True)


def wait_for_ended(uri: str) -> float:
    """Wait until the writers of commands that have ended are done with the store at `uri` (this
    process's own writer aside); the seconds it waited. A lock file left by a writer that was
    killed is removed."""
    folder = writers_folder(uri)
    if folder is None or not folder.is_dir():
        return 0.0
    started = time.monotonic()
    for path in sorted(folder.glob("*.lock")):
        if path.stem == str(os.getpid()):
            continue
        try:
            handle = open(path, "rb")
        except FileNotFoundError:  # that writer has just finished
            continue
        with handle:
            if _locked_by_someone(handle):
                traced = int(handle.read().strip() or 0)
                if traced == os.getpid():
                    continue  # this process's own writer: TraceWriter.flush waits for it
                if traced and _running(traced):
                    continue  # the writer of a command still running: it keeps up with that command
                if not _wait(handle, started + WAIT_S):
                    log.warning(
                        "the trace writer %s of an earlier command has been writing to %s for %.0f s: not waiting "
                        "for it any longer (its traces may show up in MLflow later)",
                        path.stem,
                        uri,
                        WAIT_S,
                    )
                    continue
            path.unlink(missing_ok=True)  # its writer is gone
    return time.monotonic() - started


def _locked_by_someone(handle: IO[bytes]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _wait(handle: IO[bytes], deadline: float) -> bool:
    while time.monotonic() < deadline:
        if not _locked_by_someone(handle):
            return True
        time.sleep(0.05)
    return False


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True
