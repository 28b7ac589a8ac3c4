"""File I/O for records: atomic rewrites, crash-safe appends, validated reads with clear errors."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from chareval.errors import InputError

log = logging.getLogger(__name__)
R = TypeVar("R", bound=BaseModel)


class Identified(Protocol):
    @property
    def id(self) -> str: ...


ID = TypeVar("ID", bound=Identified)


def write_text_atomic(path: Path, text: str, *, durable: bool = True) -> None:
    """Write via a temporary file + rename, so a crash never leaves a half-written file. `durable`
    also fsyncs it (milliseconds) so that it survives an OS crash or a power cut."""
    write_bytes_atomic(path, text.encode("utf-8"), durable=durable)


def write_bytes_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """write_text_atomic for bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Named by process and thread: concurrent writers of one path never share a temporary file
    # (cheaper than mkstemp's random names, which the cache pays on every model call).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_records_json(path: Path, records: Sequence[BaseModel]) -> None:
    write_text_atomic(
        path, json.dumps([r.model_dump(mode="json") for r in records], indent=2, ensure_ascii=False) + "\n"
    )


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


class JsonlAppender:
    """Appends records to a JSONL file as they finish, from one thread. Each line reaches the file at
    once (a killed process loses none of them: the kernel holds what was written); the fsync, which
    only an OS crash or a power cut needs and which costs milliseconds, runs at most once every
    `sync_every_s` and on close, so that hundreds of records a second do not wait on the disk."""

    def __init__(self, path: Path, sync_every_s: float = 1.0):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("a", encoding="utf-8")
        self.sync_every_s = sync_every_s
        self.synced = time.monotonic()

    def append(self, record: BaseModel) -> None:
        self.file.write(json.dumps(record.model_dump(mode="json"), ensure_ascii=False) + "\n")
        self.file.flush()
        if time.monotonic() - self.synced >= self.sync_every_s:
            self.sync()

    def sync(self) -> None:
        os.fsync(self.file.fileno())
        self.synced = time.monotonic()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.sync()
        finally:
            self.file.close()


def append_jsonl(path: Path, record: BaseModel) -> None:
    """Append one record as a line and fsync it: what has finished survives a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record.model_dump(mode="json"), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (and {err.error_count() - 1} more problems)" if err.error_count() > 1 else ""
    return f"{loc}: {first['msg']}{more}"


def read_input(path: Path, *, may_be_empty: bool = False) -> bytes:
    """A record file's bytes, or an error that says what is wrong with it: missing, a folder, empty
    (an output being resumed may be), or starting with a byte-order mark, which JSON forbids."""
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a file", f"pass the file inside it, e.g. {path}/<name>.jsonl")
    if not path.is_file():
        raise InputError(f"{path} does not exist", "check the path (it is relative to the current directory)")
    data = path.read_bytes()
    if not data.strip() and not may_be_empty:
        raise InputError(
            f"{path} is empty: it holds no records", "rerun the stage that writes it, or pass another file"
        )
    if data.startswith(b"\xef\xbb\xbf"):
        raise InputError(
            f"{path} starts with a UTF-8 byte-order mark (BOM), which JSON does not allow",
            "save it as UTF-8 without a BOM (most editors have the option)",
        )
    return data


def read_records_json(path: Path, model: type[R]) -> list[R]:
    """Read a JSON list of records, naming the file and item on any problem."""
    path = Path(path)
    try:
        data = json.loads(read_input(path).decode("utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON: line {e.lineno}, column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text (byte {e.start}): is it the right file?") from None
    if not isinstance(data, list):
        raise InputError(f"{path} should hold a JSON list of {model.__name__} records, found {type(data).__name__}")
    try:
        return TypeAdapter(list[model]).validate_python(data)  # type: ignore[valid-type]
    except ValidationError as e:
        raise InputError(f"{path} is not a list of {model.__name__} records: item {_describe(e)}") from None


def read_records_jsonl(path: Path, model: type[R], *, tolerate_torn_tail: bool = False) -> list[R]:
    """Read JSONL records. With tolerate_torn_tail, a half-written last line (a crash while
    appending: the one line without its newline) is dropped, with a warning, and cut from the file
    so that appends resume cleanly. Any other bad line, the last complete one included (a newer
    schema_version, a hand edit), is an error naming file:line: nothing is deleted silently."""
    path = Path(path)
    lines = read_input(path, may_be_empty=tolerate_torn_tail).split(b"\n")
    records: list[R] = []
    offset = 0
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                records.append(model.model_validate_json(line))
            except ValidationError as e:
                if tolerate_torn_tail and number == len(lines):  # split() leaves "" after a final newline
                    log.warning("%s:%d was cut off mid-write (a crash); dropping it and resuming", path, number)
                    with path.open("r+b") as f:
                        f.truncate(offset)
                    break
                if number == len(lines):  # the last line, with no newline after it: what a crash leaves
                    raise InputError(
                        f"{path}:{number}, the last line, is cut off (no newline after it: the process writing"
                        f" the file stopped mid-line) and is not a valid {model.__name__} record: {_describe(e)}",
                        "rerun the stage that wrote the file with the same hydra.run.dir (it drops the cut line"
                        " and resumes), or remove that line",
                    ) from None
                raise InputError(
                    f"{path}:{number} is not a valid {model.__name__} record: {_describe(e)}",
                    "fix or remove that line (it ends with a newline, so it was written whole: a hand edit or"
                    " another program's record)",
                ) from None
        offset += len(line) + 1
    return records


def finished_ids(path: Path, model: type[BaseModel]) -> set[str]:
    """Ids of the items (records with `id` and `error`) already done without error in a JSONL output
    (a rerun resumes after them)."""
    if not Path(path).exists():
        return set()
    records: list[Any] = read_records_jsonl(path, model, tolerate_torn_tail=True)
    return {r.id for r in latest_by_id(records) if r.error is None}


def latest_by_id(records: list[ID]) -> list[ID]:
    """Keep the last record for each id, in first-seen order (a retried item supersedes its error)."""
    by_id: dict[str, ID] = {}
    for r in records:
        by_id[r.id] = r  # re-assigning keeps the key's first position
    return list(by_id.values())


class RunFolderBusy(InputError):
    """Another process holds the run folder's lock (a job of a killed sweep may still be running)."""

    def __init__(self, run_dir: Path, holder: str):
        super().__init__(
            f"another chareval process (pid {holder}) is writing to {run_dir}",
            "wait for it to finish (a rerun then resumes from what it wrote), or give this run "
            "another folder with hydra.run.dir=<folder>",
        )
        self.holder = holder


@contextmanager
def hold_run_dir(run_dir: Path) -> Iterator[None]:
    """An exclusive lock on a run folder while a job writes in it: a second process on the same folder
    (which would append duplicate records) stops at once, naming the holder. The lock is the kernel's
    (flock), so it goes away with its process, even after kill -9."""
    lock_file = Path(run_dir) / ".chareval.lock"
    with open(lock_file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise RunFolderBusy(run_dir, handle.read().strip() or "unknown") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
