"""Traces and feedback written to the MLflow store by a process of their own.

MLflow writes each trace to its store from a thread of the process that made it: 20-40 ms of CPU a
trace (its SQLAlchemy store), under the same GIL as the model calls, which made a stage at 100 ms a
call 2-7x slower with traces on; its span API alone costs about 0.5 ms of CPU a span. Here the
traced process makes no MLflow span: it chooses the ids (so that records and feedback know a trace
id at once) and sends each span's start and end, with their times, to a writer process, `python -m
chareval.store.trace_writer`, which makes the spans with MLflow's span API under those ids and
times and writes what MLflow's exporter hands it, in batches, on another core, each trace before its
spans (see HOLD_S). Feedback goes the same way, so a verdict is written after the trace it is
attached to.

The writer runs at the command's priority (at nice 19 it starved beside busy processes, a sweep's
parallel jobs, and later commands waited minutes for it; the stages ran no faster), in a session of
its own, and nothing waits for it: a command ends when its work is done, and
its writer goes on until it has written everything it was sent, also when that command dies
without closing it (kill -9): the spans of an unfinished item reach the store, and a resume closes
that trace as interrupted (trace_repair). What the dead command had queued and not yet sent is
lost, as MLflow's in-process queue would lose it. A later command on the same store waits for the
writers of ended commands before it writes or reads traces (store/writer_registry.py), so a
verdict is never attached to a trace that is not there yet."""

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

from chareval.store.writer_registry import register, unregister, wait_for_ended, writers_folder

log = logging.getLogger(__name__)

# The messages (tuples, pickled in batches, each batch framed by its length):
#   ("start", uri, experiment_id, trace, span, parent, name, type, start_ns, inputs, attributes, tags, metadata)
#        a span starts: ids as OpenTelemetry's integers; uri, experiment, tags and metadata only for a
#        root span (a new trace), None for the others
#   ("end", span, end_ns, outputs, attributes, status, exception)  it ends; exception: None or
#        (type name, message, stack trace), what MLflow's span API records of one
#   ("feedback", uri, trace_id, name, assessment)  one assessment (log_feedback's arguments)
#   ("log", path)                                  the run log of the job now traced: where warnings go
#                                                  once the traced process has exited
#   ("flush", n)                                   answered "ack n" once everything before it is written
#   ("close",)                                     write everything, then exit
# The writer answers on its stdout: "got <k>" once it has read k batches (and registered on their
# stores), "ack <n>" and "warn <message>" lines.
# How long a closing command waits for the writer to have read what it sent (it starts in ~0.1 s).
RECEIPT_S = 10.0
FRAME = 4
# The writer writes what it was sent at most this long after it came, all of it in one store call per
# kind: MLflow's store spends some 20 ms on a call to log spans, however few, and ~1 ms a span more.
WRITE_EVERY_S = 0.5
# The spans of a trace still open are held (in this process) until the trace ends, and written after
# it: MLflow's store writes a trace it does not have yet in one insert (~5 ms of CPU), but one whose
# spans came first by merging row by row (~13 ms). A trace open longer than this has its spans
# written anyway, so that the MLflow UI shows a long conversation, or a stage's contexts, in progress.
HOLD_S = 5.0


def log_feedback(
    trace_id: str,
    name: str,
    *,
    source: tuple[str, str],
    value: Any = None,
    rationale: str | None = None,
    metadata: dict[str, Any] | None = None,
    error: str | None = None,
    uri: str | None = None,
) -> None:
    """mlflow.log_feedback on the store at `uri` (the current one by default); `source` = (LLM_JUDGE |
    HUMAN, who), `error` for a judgment that has no verdict. Metadata values are kept as text (JSON
    for lists and numbers)."""
    from mlflow.entities import AssessmentError, AssessmentSource, Feedback
    from mlflow.tracing.client import TracingClient

    feedback = Feedback(
        name=name,
        value=None if error else value,
        rationale=rationale,
        source=AssessmentSource(source_type=source[0], source_id=source[1]),
        metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()},
        error=AssessmentError(error_code="JUDGE_ERROR", error_message=error) if error else None,
    )
    TracingClient(tracking_uri=uri).log_assessment(trace_id, feedback)


def try_feedback(trace_id: str, name: str, assessment: dict[str, Any], uri: str | None = None) -> str | None:
    """log_feedback, or the warning to give when it fails: the trace is not in this store (the
    conversations were traced into another one). The verdicts stay in the run's files either way."""
    try:
        log_feedback(trace_id, name, uri=uri, **assessment)
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
            [sys.executable, "-m", "chareval.store.trace_writer", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # Not the command's stderr: whoever reads that (a pipe, `| tee`) would wait for the writer's end.
            # The writer reports on its stdout, its failure too.
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a Ctrl-C or a closed terminal stops the command, not what it sent
        )
        self._queue: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._tokens = itertools.count(1)
        self._acked = 0
        self._sent = 0  # batches sent
        self._got = 0  # batches the writer has read (and registered the stores of)
        self._stopped = False
        self._changed = threading.Condition()
        self._sender = threading.Thread(target=self._send, name="chareval-trace-sender", daemon=True)
        self._sender.start()
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
        """Hand everything over to the writer process, which writes it and then exits; this
        process does not wait for that (a later command on the store does, store/writer_registry.py),
        only for the writer to have read it: from then on the writer is registered on every store it
        has something for, so that a command started the moment this one exits waits for it."""
        self.put(("close",))
        self._sender.join(timeout=60)
        with self._changed:
            self._changed.wait_for(lambda: self._got >= self._sent or self._stopped, timeout=RECEIPT_S)
        if self._process.poll() is None and not self._stopped:
            log.info(
                "MLflow traces: the writer process (pid %d) is writing the last of them; they appear in the MLflow "
                "UI within seconds",
                self._process.pid,
            )

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
                with self._changed:
                    self._sent += 1
                if batch[-1][0] == "close":
                    stream.close()
                    return
            except (OSError, ValueError):  # the writer is gone; _receive says so
                return

    def _receive(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            kind, _, rest = line.decode(errors="replace").rstrip("\n").partition(" ")
            if kind in ("ack", "got"):
                with self._changed:
                    if kind == "ack":
                        self._acked = int(rest)
                    else:
                        self._got = int(rest)
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
    """Wait until the traces and feedback of this process, and those of ended commands on the
    current store, are in the store (before reading them); the seconds it waited."""
    import mlflow

    started = time.perf_counter()
    if _shared is not None:
        _shared.flush()
    wait_for_ended(mlflow.get_tracking_uri())
    return time.perf_counter() - started


def shared_writer() -> TraceWriter:
    """One writer process for this process (every store it traces to), closed at exit."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = TraceWriter()
            atexit.register(_shared.close)
        return _shared


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

    def __init__(self, out: IO[str], traced_pid: int = 0):
        self.out = out
        self.traced_pid = traced_pid  # the process this writer writes for
        self.locks: dict[str, IO[bytes] | None] = {}  # store -> this writer's lock in its folder (writer_registry)
        self.waited: set[str] = set()  # stores whose earlier writers this one has waited for
        self.held: dict[str, Held] = {}  # trace id -> its spans not yet written
        self.spans_of: dict[str, list[Any]] = {}  # trace id -> all its spans, until the trace is written
        self.traces: list[tuple[str, Any]] = []  # (uri, TraceInfo) of ended traces, to write
        self.assessments: list[tuple] = []  # (uri, trace id, name, assessment) to write after the traces
        self.first_sent: float | None = None  # when the oldest of what is to be written with the next batch came
        self.exporters: dict[str, Any] = {}
        self.warned: set[str] = set()
        self.log_file: str | None = None  # the run log of the job traced last ("log")
        self.guard = threading.Lock()  # seen and answer are also called by the thread reading the batches
        self.late: logging.Logger | None = None  # writes to it once the traced process is gone

    def seen(self, uri: str) -> None:
        """A store this writer has something for (read_batches calls it as each batch comes, before
        the batch is handled): said in the store's folder at once, so that a later command waits for it."""
        with self.guard:
            if uri in self.locks:
                return
            try:
                self.locks[uri] = register(uri, self.traced_pid)
                return
            except OSError as e:  # a full disk, a folder that cannot be written: the writer goes on without it
                self.locks[uri] = None
                problem = e
        self.answer(  # once: the store is now in self.locks
            f"warn cannot note in {writers_folder(uri)} that this command's traces are still being written "
            f"({problem}): a command started on this store right after it may not find its last traces and verdicts"
        )

    def release(self) -> None:
        """Before exiting (the locks go with the process)."""
        for uri, lock in self.locks.items():
            if lock is not None:  # None: another kind of store, or one it could not register on
                unregister(uri)

    def add_spans(self, uri: str, experiment_id: str, spans: list[Any]) -> None:
        """Spans that ended (MLflow's exporter hands them over as they end)."""
        for span in spans:
            held = self.held.setdefault(span.trace_id, Held(uri, experiment_id, time.monotonic()))
            held.spans.append(span)
            self.spans_of.setdefault(span.trace_id, []).append(span)

    def add_trace(self, uri: str, info: Any) -> None:
        """A trace whose root span ended (its TraceInfo)."""
        self.traces.append((uri, info))
        self._soon()

    def take(self, message: tuple) -> bool:
        """Handle one message that is not a span's; False once the writer should exit."""
        kind = message[0]
        if kind == "log":
            self.log_file = message[1]
        elif kind == "feedback":
            self.assessments.append(message[1:])
            self._soon()
        else:  # flush or close: everything, the spans of open traces too
            self.write(everything=True)
            if kind == "flush":
                self.answer(f"ack {message[1]}")
        return kind != "close"

    def _soon(self) -> None:
        if self.first_sent is None:
            self.first_sent = time.monotonic()

    def due(self) -> float | None:
        """When the next write must happen (time.monotonic); None while nothing waits."""
        times = [self.first_sent + WRITE_EVERY_S] if self.first_sent is not None else []
        if self.held:
            times.append(min(h.since for h in self.held.values()) + HOLD_S)
        return min(times, default=None)

    def write(self, everything: bool = False) -> None:
        """The ended traces first (MLflow's own exporter code, called as its worker thread would
        call it), then their spans and those of traces open longer than HOLD_S (with `everything`,
        all), in one store call per experiment, then the
        feedback, which needs its trace in the store."""
        from mlflow.entities import Trace, TraceData

        for uri in set(self.locks) - self.waited:  # their traces first (this writer's verdicts may be on them)
            wait_for_ended(uri)
            self.waited.add(uri)
        ended = set()
        with ExitStack() as once:
            for uri in {uri for uri, _ in self.traces}:
                once.enter_context(experiments_read_once(self.exporter(uri)._client.store))
            for uri, trace_info in self.traces:
                ended.add(trace_info.trace_id)
                spans = self.spans_of.pop(trace_info.trace_id, [])
                self.exporter(uri)._log_trace(Trace(info=trace_info, data=TraceData(spans=spans)), prompts=[])
        self.traces.clear()
        self.first_sent = None
        held_until = time.monotonic() - HOLD_S
        batches: dict[tuple[str, str], list[Any]] = {}
        ready = [t for t, h in self.held.items() if t in ended or h.since <= held_until]
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
        warning = try_feedback(trace_id, name, assessment, uri)
        if warning and uri not in self.warned:
            self.warned.add(uri)
            self.answer(f"warn {warning}")

    def exporter(self, uri: str) -> Any:
        from mlflow.tracing.export.mlflow_v3 import MlflowV3SpanExporter

        if uri not in self.exporters:
            self.exporters[uri] = MlflowV3SpanExporter(tracking_uri=uri)
        return self.exporters[uri]

    def warn_once(self, what: str, message: str) -> None:
        if what not in self.warned:
            self.warned.add(what)
            self.answer(f"warn {message}")

    def answer(self, line: str) -> None:
        with self.guard:
            try:
                self.out.write(line.replace("\n", " ") + "\n")
                self.out.flush()
                return
            except OSError:  # the traced process is gone; what it sent is still written
                pass
        if line.startswith("warn "):
            self.warn_late(line.removeprefix("warn "))

    def warn_late(self, message: str) -> None:
        """A warning after the traced process has exited: appended to its last job's run log, as
        that process would have logged it (redacted), saying that it came late."""
        if self.log_file is None:
            return
        if self.late is None:
            from chareval.log_filters import RedactingFilter

            handler = logging.FileHandler(self.log_file, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            handler.addFilter(RedactingFilter())
            self.late = logging.getLogger("chareval.store.trace_writer.after_exit")
            self.late.propagate = False  # not to the relay (relay_library_logs), which answers here
            self.late.handlers = [handler]
        self.late.warning("%s (the trace writer, after the command had exited)", message)


class Replay:
    """The traced process's spans, made here with MLflow's span API under that process's ids and
    times (so that the store gets what MLflow would have written there); MLflow's exporter hands
    what ends to the Store. Built on the first span: MLflow's tracer reads the tracking URI then."""

    def __init__(self, store: Store, uri: str):
        self.store = store
        self.uri = uri  # the first store; MLflow's tracer is built for it
        self.live: dict[int, Any] = {}  # span id -> its LiveSpan, until it ends
        self.uri_of: dict[str, str] = {}  # trace id -> its store, until the trace is exported
        self.next_ids = (0, 0)  # the trace and span ids that MLflow's next span gets
        self.exporter: Any = None
        self.install()

    def install(self) -> None:
        """MLflow's tracer as the replay needs it: its exporter hands over to the Store, its ids are
        the traced process's. Again whenever MLflow has built a new tracer (it does so when the
        tracking URI is set)."""
        import mlflow
        from mlflow.tracing.export.mlflow_v3 import MlflowV3SpanExporter
        from mlflow.tracing.provider import _get_span_processor, _get_tracer

        replay = self

        class ToStore(MlflowV3SpanExporter):
            """MLflow's exporter, its two writes handed to the Store (which writes them in batches)."""

            def _should_enable_async_logging(self) -> bool:
                return False  # the Store batches; MLflow's thread would write span by span

            def _log_spans(self, experiment_id: str, spans: list, *args: Any, **kwargs: Any) -> None:
                by_uri: dict[str, list[Any]] = {}
                for span in spans:
                    by_uri.setdefault(replay.uri_of.get(span.trace_id, replay.uri), []).append(span)
                for span_uri, of_uri in by_uri.items():
                    replay.store.add_spans(span_uri, experiment_id, of_uri)

            def _log_trace(self, trace: Any, *args: Any, **kwargs: Any) -> None:
                # chareval links prompt versions to runs, never to traces: there are no prompts.
                replay.store.add_trace(replay.uri_of.pop(trace.info.trace_id, replay.uri), trace.info)

        if mlflow.get_tracking_uri() != self.uri:
            mlflow.set_tracking_uri(self.uri)
        tracer = _get_tracer(__name__)  # MLflow builds its tracer provider, and its exporter, on first use
        processor = _get_span_processor()
        if getattr(processor, "_batch_delegate", None) is not None:  # MLflow's batching thread
            processor._batch_delegate.shutdown()
            processor._batch_delegate = None
        self.exporter = processor.span_exporter = ToStore(tracking_uri=self.uri)
        # Every tracer of MLflow's provider shares its id generator: it hands out the traced process's ids.
        ids = tracer.id_generator
        ids.generate_trace_id = lambda: self.next_ids[0]
        ids.generate_span_id = lambda: self.next_ids[1]

    def start(self, message: tuple) -> None:
        import mlflow
        from mlflow.tracing.constant import SpanAttributeKey
        from mlflow.tracing.provider import _get_span_processor

        _, uri, experiment, trace, span_id, parent, name, span_type, start_ns, inputs, attributes, tags, metadata = (
            message
        )
        if parent is None and getattr(_get_span_processor(), "span_exporter", None) is not self.exporter:
            self.install()
        self.next_ids = (trace, span_id)
        parent_span = self.live.get(parent) if parent is not None else None
        if parent is not None and parent_span is None:
            return  # its parent was never made here (it started before a failure): MLflow would drop it too
        span = mlflow.start_span_no_context(
            name,
            span_type=span_type,
            parent_span=parent_span,
            inputs=inputs,
            attributes=attributes,
            tags=tags,
            metadata=metadata,
            experiment_id=experiment,
            start_time_ns=start_ns,
        )
        if parent is None:
            self.uri_of[span.trace_id] = uri
        # Two attributes MLflow adds for a span started at a given time in a given experiment: read at
        # its start, they are not on a span made in the traced process, and not in the store here.
        for key in (SpanAttributeKey.START_TIME_NS, SpanAttributeKey.EXPERIMENT_ID):
            span._span._attributes.pop(key, None)  # OpenTelemetry's own mapping; .attributes is a read-only view
        if span.span_id != format(span_id, "016x"):
            self.store.warn_once(
                "ids",
                f"MLflow {mlflow.__version__} gave a span an id of its own: the trace ids in the run's files "
                "may not match the store's, and verdicts may not attach to their conversations",
            )
        self.live[span_id] = span

    def end(self, message: tuple) -> None:
        from mlflow.entities import SpanEvent, SpanStatus, SpanStatusCode

        _, span_id, end_ns, outputs, attributes, status, failure = message
        span = self.live.pop(span_id, None)
        if span is None:
            return
        if failure is not None:  # as MLflow's span API records an exception
            kind, text, stack = failure
            attrs = {"exception.message": text, "exception.type": kind, "exception.stacktrace": stack}
            span.add_event(SpanEvent(name="exception", attributes=attrs))
            span.set_status(SpanStatus(status_code=SpanStatusCode.ERROR, description=f"{kind}: {text}"))
        span.end(outputs=outputs, attributes=attributes, status=status, end_time_ns=end_ns)


def read_batches(stream: IO[bytes], into: queue.SimpleQueue, store: Store) -> None:
    """Frames from the traced process; None at the end of its stream. Each batch's stores are
    registered (writer_registry) as it is read, before its receipt is answered: the traced process
    may exit as soon as it has that receipt for its last batch, long before it is written."""
    try:
        for count in itertools.count(1):
            head = stream.read(FRAME)
            body = stream.read(int.from_bytes(head, "big")) if len(head) == FRAME else b""
            if not body:
                break
            batch = pickle.loads(body)
            for message in batch:
                if message[0] in ("start", "feedback") and message[1] is not None:  # a new trace's, a verdict's store
                    store.seen(message[1])
            store.answer(f"got {count}")
            into.put(batch)
    except Exception as e:  # without this thread the writer would wait for batches for ever
        store.answer(f"warn the trace writer stopped reading ({type(e).__name__}: {e}): later traces are lost")
    into.put(None)  # the end: what came is written, then the writer exits


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


def serve(traced_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the traced process, which then closes us
    batches: queue.SimpleQueue[list[tuple] | None] = queue.SimpleQueue()
    store = Store(sys.stdout, traced_pid)
    threading.Thread(target=read_batches, args=(sys.stdin.buffer, batches, store), daemon=True).start()
    relay_library_logs(store)  # imports MLflow (seconds): the batches are read and registered meanwhile
    try:
        replay_messages(store, batches)
    finally:
        store.release()


def replay_messages(store: Store, batches: queue.SimpleQueue) -> None:
    replay: Replay | None = None
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
            kind = message[0]
            if kind in ("start", "end"):
                try:
                    if kind == "start":
                        replay = replay or Replay(store, message[1])
                        replay.start(message)
                    elif replay is not None:
                        replay.end(message)
                except Exception as e:  # one span lost, not the writer: say so once
                    store.warn_once(
                        "replay", f"a span could not be made for MLflow ({type(e).__name__}: {e}); later spans go on"
                    )
            elif not store.take(message):
                return


if __name__ == "__main__":
    try:
        serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    except Exception as e:  # said on stdout: this process has no stderr
        Store(sys.stdout).answer(f"warn the trace writer failed: {type(e).__name__}: {e}")
        sys.stdout.flush()
        os._exit(1)
    # Everything is written. os._exit, not a return: the reading thread may still hold stdin, and
    # the interpreter's shutdown would abort on it.
    try:
        sys.stdout.flush()
    except OSError:  # the traced process is gone
        pass
    os._exit(0)
