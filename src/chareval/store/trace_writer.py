"""Traces and feedback written to the MLflow store by a process of their own.

MLflow writes each trace to its store from a thread of the process that made it: 20-40 ms of CPU a
trace (its SQLAlchemy store), under the same GIL as the model calls, which made a stage at 100 ms a
call 2-7x slower with traces on. Here MLflow still makes the spans in this process (its span API,
about 0.5 ms a span; trace ids are known at once, as records and feedback need them), but its
exporter hands every finished span and trace to a writer process, `python -m
chareval.store.trace_writer`, which writes them with MLflow's own exporter code, in batches, on
another core, each trace before its spans (see HOLD_S). Feedback goes the same way, so a verdict is
written after the trace it is attached to.

The writer ignores Ctrl-C (the command that started it finishes its work and then closes it) and
writes everything it was sent before it exits, also when that command dies without closing it
(kill -9): the spans of an unfinished item reach the store, and a resume closes that trace as
interrupted (trace_repair). What the dead command had queued and not yet sent is lost, as MLflow's
in-process queue would lose it."""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

# The messages (tuples, pickled in batches, each batch framed by its length):
#   ("spans", uri, experiment_id, [span dicts])   spans as they end (an unfinished trace keeps them)
#   ("trace", uri, trace info dict)               a trace whose root span ended
#   ("feedback", uri, trace_id, name, assessment)  one assessment (log_feedback's arguments)
#   ("flush", n)                                   answered "ack n" once everything before it is written
#   ("close",)                                     write everything, then exit
# The writer answers on its stdout: "ack <n>" and "warn <message>" lines.
FRAME = 4
# The writer writes what it was sent at most this long after it came, all of it in one store call per
# kind: MLflow's store spends some 20 ms on a call to log spans, however few, and ~1 ms a span more.
WRITE_EVERY_S = 0.5
# The spans of a trace still open are held (in this process) until the trace ends, and written after
# it: MLflow's store writes a trace it does not have yet in one insert (~5 ms of CPU), but one whose
# spans came first by merging row by row (~13 ms). A trace open longer than this has its spans
# written anyway, so that the MLflow UI shows a long conversation in progress; so are those of a trace
# with many spans (the contexts of a stage, all in one trace), which would otherwise all be written
# at its end, while the stage waits: the merge costs the same for one trace whatever its size.
HOLD_S = 5.0
HOLD_SPANS = 32


def log_feedback(
    trace_id: str,
    name: str,
    *,
    source: tuple[str, str],
    value: Any = None,
    rationale: str | None = None,
    metadata: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    """mlflow.log_feedback on the current store; `source` = (LLM_JUDGE | HUMAN, who), `error` for a
    judgment that has no verdict. Metadata values are kept as text (JSON for lists and numbers)."""
    import mlflow
    from mlflow.entities import AssessmentError, AssessmentSource

    mlflow.log_feedback(
        trace_id=trace_id,
        name=name,
        value=None if error else value,
        rationale=rationale,
        source=AssessmentSource(source_type=source[0], source_id=source[1]),
        metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()},
        error=AssessmentError(error_code="JUDGE_ERROR", error_message=error) if error else None,
    )


def try_feedback(trace_id: str, name: str, assessment: dict[str, Any]) -> str | None:
    """log_feedback, or the warning to give when it fails: the trace is not in this store (the
    conversations were traced into another one). The verdicts stay in the run's files either way."""
    try:
        log_feedback(trace_id, name, **assessment)
        return None
    except Exception as e:
        first_line = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        return (
            f"cannot attach {name} feedback to trace {trace_id} (is it in another MLflow store?): {first_line}; "
            "the verdicts are in the run's files"
        )


class TraceWriter:
    """This process's end of the writer process: messages are queued (the callers never wait on
    the store) and a thread sends them in batches."""

    def __init__(self) -> None:
        src = str(Path(__file__).resolve().parents[2])
        env = os.environ | {"PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "chareval.store.trace_writer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self._queue: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._tokens = itertools.count(1)
        self._acked = 0
        self._stopped = False
        self._changed = threading.Condition()
        threading.Thread(target=self._send, name="chareval-trace-sender", daemon=True).start()
        threading.Thread(target=self._receive, name="chareval-trace-receiver", daemon=True).start()

    def put(self, message: tuple) -> None:
        if not self._stopped:
            self._queue.put(message)

    def flush(self) -> None:
        """Wait until the writer has written everything sent before this call."""
        token = next(self._tokens)
        self.put(("flush", token))
        with self._changed:
            self._changed.wait_for(lambda: self._acked >= token or self._stopped)

    def close(self) -> None:
        """Write everything, then end the writer process."""
        self.put(("close",))
        self._process.wait()

    def _send(self) -> None:
        stream = self._process.stdin
        assert stream is not None
        while True:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            data = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
            try:
                stream.write(len(data).to_bytes(FRAME, "big") + data)
                stream.flush()
                if batch[-1][0] == "close":
                    stream.close()
                    return
            except (OSError, ValueError):  # the writer is gone; _receive says so
                return

    def _receive(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            kind, _, rest = line.decode(errors="replace").rstrip("\n").partition(" ")
            if kind == "ack":
                with self._changed:
                    self._acked = int(rest)
                    self._changed.notify_all()
            elif kind == "warn":
                log.warning("%s", rest)
        code = self._process.wait()
        if code:
            log.warning(
                "the trace writer stopped (exit code %s): later traces and verdicts are not in MLflow; the run's "
                "files have them all, and a resume of the same command traces the conversations again",
                code,
            )
        with self._changed:  # after the warning: whoever waited on the writer goes on knowing why
            self._stopped = True
            self._changed.notify_all()


_shared: TraceWriter | None = None
_shared_lock = threading.Lock()


def flush_shared() -> float:
    """Wait until this process's traces and feedback are in the store (before reading them, and at
    the end of a command); the seconds it waited."""
    if _shared is None:
        return 0.0
    started = time.perf_counter()
    _shared.flush()
    return time.perf_counter() - started


def shared_writer() -> TraceWriter:
    """One writer process for this process (every store it traces to), closed at exit."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = TraceWriter()
            atexit.register(_shared.close)
        return _shared


def route_to_writer() -> TraceWriter | None:
    """Make MLflow's exporter in this process hand spans and traces to the writer process instead of
    writing them itself; that writer. None (traces stay in this process, as MLflow writes them) if
    MLflow's tracer is not built as this expects (another MLflow version)."""
    import mlflow
    from mlflow.tracing.export.mlflow_v3 import MlflowV3SpanExporter
    from mlflow.tracing.provider import _get_span_processor, _get_tracer

    class ForwardingExporter(MlflowV3SpanExporter):
        """MLflow's exporter with its two writes sent to the writer (the rest, which spans and
        traces to export and when, is MLflow's)."""

        def __init__(self, uri: str, writer: TraceWriter):
            super().__init__(tracking_uri=uri)
            self.uri = uri
            self._writer = writer

        def _should_enable_async_logging(self) -> bool:
            return False  # a hand-off to a queue needs no thread of its own

        def _log_spans(self, experiment_id: str, spans: list, workspace: str | None = None) -> None:
            self._writer.put(("spans", self.uri, experiment_id, [s.to_dict() for s in spans]))

        def _log_trace(self, trace: Any, prompts: Any, workspace: str | None = None) -> None:
            # chareval links prompt versions to runs, never to traces: `prompts` is always empty.
            self._writer.put(("trace", self.uri, trace.info.to_dict()))

    uri = mlflow.get_tracking_uri()
    _get_tracer(__name__)  # MLflow builds its tracer provider, and the exporter, on first use
    processor = _get_span_processor()
    exporter = getattr(processor, "span_exporter", None)
    if getattr(exporter, "uri", None) == uri:
        return shared_writer()
    if not isinstance(exporter, MlflowV3SpanExporter) or not hasattr(processor, "_batch_delegate"):
        log.warning(
            "MLflow %s traces in this process (its tracer is not built as chareval expects)", mlflow.__version__
        )
        return None
    if processor._batch_delegate is not None:  # MLflow's batching thread, which would write in this process
        processor._batch_delegate.shutdown()
        processor._batch_delegate = None
    writer = shared_writer()
    processor.span_exporter = ForwardingExporter(uri, writer)
    return writer


# ---- the writer process ----------------------------------------------------------------------------


@contextmanager
def experiments_read_once(store: Any) -> Iterator[None]:
    """MLflow's store reads the trace's experiment again for every trace it starts (a third of the
    CPU start_trace takes on SQLite); within one write of the writer it is the same experiment."""
    read = store.get_experiment
    seen: dict[str, Any] = {}

    def get_experiment(experiment_id: str) -> Any:
        if experiment_id not in seen:
            seen[experiment_id] = read(experiment_id)
        return seen[experiment_id]

    own = vars(store).get("get_experiment")  # None: the method is the class's
    store.get_experiment = get_experiment
    try:
        yield
    finally:
        if own is None:
            del store.get_experiment  # the class's method again
        else:
            store.get_experiment = own


@dataclass
class Held:
    """The spans of an open trace that are not written yet."""

    uri: str
    experiment_id: str
    since: float  # when the first of them came
    spans: list[Any] = field(default_factory=list)


class Store:
    """What the writer has been sent and not yet written, and the writing of it."""

    def __init__(self, out: IO[str]):
        self.out = out
        self.held: dict[str, Held] = {}  # trace id -> its spans not yet written
        self.spans_of: dict[str, list[Any]] = {}  # trace id -> all its spans, until the trace is written
        self.traces: list[tuple[str, dict]] = []  # (uri, trace info) of ended traces, to write
        self.assessments: list[tuple] = []  # (uri, trace id, name, assessment) to write after the traces
        self.first_sent: float | None = None  # when the oldest of what is to be written with the next batch came
        self.exporters: dict[str, Any] = {}
        self.warned: set[str] = set()

    def take(self, message: tuple) -> bool:
        """Handle one message; False once the writer should exit."""
        from mlflow.entities import Span

        kind = message[0]
        if kind == "spans":
            _, uri, experiment_id, dicts = message
            for span in (Span.from_dict(d) for d in dicts):
                held = self.held.setdefault(span.trace_id, Held(uri, experiment_id, time.monotonic()))
                held.spans.append(span)
                self.spans_of.setdefault(span.trace_id, []).append(span)
                if len(held.spans) >= HOLD_SPANS and self.first_sent is None:
                    self.first_sent = time.monotonic()  # written with the next batch
        elif kind in ("trace", "feedback"):
            if kind == "trace":
                self.traces.append((message[1], message[2]))
            else:
                self.assessments.append(message[1:])
            if self.first_sent is None:
                self.first_sent = time.monotonic()
        else:  # flush or close: everything, the spans of open traces too
            self.write(everything=True)
            if kind == "flush":
                self.answer(f"ack {message[1]}")
        return kind != "close"

    def due(self) -> float | None:
        """When the next write must happen (time.monotonic); None while nothing waits."""
        times = [self.first_sent + WRITE_EVERY_S] if self.first_sent is not None else []
        if self.held:
            times.append(min(h.since for h in self.held.values()) + HOLD_S)
        return min(times, default=None)

    def write(self, everything: bool = False) -> None:
        """The ended traces first (MLflow's own exporter code, called as its worker thread would
        call it), then their spans and those of traces open longer than HOLD_S or with HOLD_SPANS
        spans waiting (with `everything`, all), in one store call per experiment, then the
        feedback, which needs its trace in the store."""
        from mlflow.entities import Trace, TraceData, TraceInfo

        ended = set()
        with ExitStack() as once:
            for uri in {uri for uri, _ in self.traces}:
                once.enter_context(experiments_read_once(self.exporter(uri)._client.store))
            for uri, info in self.traces:
                trace_info = TraceInfo.from_dict(info)
                ended.add(trace_info.trace_id)
                spans = self.spans_of.pop(trace_info.trace_id, [])
                self.exporter(uri)._log_trace(Trace(info=trace_info, data=TraceData(spans=spans)), prompts=[])
        self.traces.clear()
        self.first_sent = None
        held_until = time.monotonic() - HOLD_S
        batches: dict[tuple[str, str], list[Any]] = {}
        ready = [t for t, h in self.held.items() if t in ended or h.since <= held_until or len(h.spans) >= HOLD_SPANS]
        for trace_id in list(self.held) if everything else ready:
            held = self.held.pop(trace_id)
            batches.setdefault((held.uri, held.experiment_id), []).extend(held.spans)
        for (uri, experiment_id), spans in batches.items():
            self.exporter(uri)._log_spans(experiment_id, spans)
        for uri, trace_id, name, assessment in self.assessments:
            self.feedback(uri, trace_id, name, assessment)
        self.assessments.clear()

    def feedback(self, uri: str, trace_id: str, name: str, assessment: dict[str, Any]) -> None:
        """One assessment; a store that cannot take them is warned about once."""
        import mlflow

        if mlflow.get_tracking_uri() != uri:
            mlflow.set_tracking_uri(uri)
        warning = try_feedback(trace_id, name, assessment)
        if warning and uri not in self.warned:
            self.warned.add(uri)
            self.answer(f"warn {warning}")

    def exporter(self, uri: str) -> Any:
        from mlflow.tracing.export.mlflow_v3 import MlflowV3SpanExporter

        if uri not in self.exporters:
            self.exporters[uri] = MlflowV3SpanExporter(tracking_uri=uri)
        return self.exporters[uri]

    def answer(self, line: str) -> None:
        try:
            self.out.write(line.replace("\n", " ") + "\n")
            self.out.flush()
        except OSError:  # the traced process is gone; what it sent is still written
            pass


def read_batches(stream: IO[bytes], into: queue.SimpleQueue) -> None:
    """Frames from the traced process; None at the end of its stream."""
    while True:
        head = stream.read(FRAME)
        body = stream.read(int.from_bytes(head, "big")) if len(head) == FRAME else b""
        if not body:
            into.put(None)
            return
        into.put(pickle.loads(body))


def relay_library_logs(store: Store) -> None:
    """MLflow's and its libraries' warnings go to the traced process, which logs them as its own
    (run.log, the console): once each, one line, no traceback, redacted, as there."""
    import mlflow  # noqa: F401 (it sets up its logger on import; the relay replaces its handler)

    from chareval.log_filters import LibraryNoiseFilter, RedactingFilter

    class Relay(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            store.answer(f"warn {record.name}: {record.getMessage()}")

    relay = Relay(logging.WARNING)
    relay.addFilter(RedactingFilter())
    relay.addFilter(LibraryNoiseFilter())
    for name in ("", "mlflow"):
        logger = logging.getLogger(name)
        logger.handlers = [relay]
        logger.setLevel(logging.WARNING)


def serve() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the traced process, which then closes us
    batches: queue.SimpleQueue[list[tuple] | None] = queue.SimpleQueue()
    threading.Thread(target=read_batches, args=(sys.stdin.buffer, batches), daemon=True).start()
    store = Store(sys.stdout)
    relay_library_logs(store)
    while True:
        due = store.due()
        try:
            batch = batches.get(timeout=None if due is None else max(0.0, due - time.monotonic()))
        except queue.Empty:
            store.write()
            continue
        if batch is None:  # the traced process died without closing us: keep what it sent
            store.write(everything=True)
            return
        for message in batch:
            if not store.take(message):
                return


if __name__ == "__main__":
    serve()
    # Everything is written. os._exit, not a return: the reading thread may still hold stdin, and
    # the interpreter's shutdown would abort on it.
    sys.stdout.flush()
    os._exit(0)
