"""Filters on every log handler (conf/hydra/job_logging/chareval.yaml): what reaches run.log and the
console is redacted, and a store that fails does not bury chareval's own message under thousands of
lines of its libraries' tracebacks."""

from __future__ import annotations

import logging
import threading

from chareval.secrets import redact_text


class RedactingFilter(logging.Filter):
    """A log line, and the traceback with it, redacted (a server's error text can quote the key)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


# Libraries that log every failed write or request of a store that is gone, with its traceback.
NOISY = ("mlflow", "urllib3", "alembic", "sqlalchemy", "opentelemetry")


class LibraryNoiseFilter(logging.Filter):
    """A library's warning or error once, on one line: no traceback, no repeats. chareval says what
    stopped and how to resume in one paragraph; the libraries' repeats only hide it."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(NOISY):
            return True
        if record.name.startswith("urllib3") and record.getMessage().startswith("Retrying"):
            return False  # a retry is not a failure; each says its retry counts, so none repeats another
        line = record.getMessage().strip().splitlines()[0][:300] if record.getMessage().strip() else ""
        with self._lock:
            if (record.name, line) in self._seen:
                return False
            self._seen.add((record.name, line))
        record.msg, record.args, record.exc_info, record.exc_text, record.stack_info = line, None, None, None, None
        return True
