"""Model calls as MLflow traces, and verdicts as feedback on them, so that the MLflow UI's GenAI pages
(Traces, Sessions) show each conversation with its judges' verdicts beside it.

A stage opens a trace per unit of work (a conversation, a context, a judgment) and every model call
made inside it is an LLM span of that trace; a call outside any unit is a trace of its own. Each
trace is linked to its stage's MLflow run. Requests carry no API key (providers add it when they
send), so no span can hold one. The spans are made here and written by another process
(store/trace_writer.py), as is the feedback. Off (every method a no-op, mlflow not even imported)
when the tracer has no run: tracking.enabled=false or tracking.traces=false."""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chareval.schemas import Conversation, JudgeCase
from chareval.store import names
from chareval.store.trace_writer import TraceWriter, flush_shared, shared_writer

if TYPE_CHECKING:
    from chareval.llm.base import LLMRequest, LLMResponse

log = logging.getLogger(__name__)

# The root span of a conversation's trace keeps the whole Conversation record here, so that a
# later process (judge_check reading labels from the store) can rebuild it from the trace alone.


# The stage run on every span: an interrupted trace (its root never ended) has no run link or tags in
# the store, only the spans that ended; this is how a resume finds it (see trace_repair).
SPAN_TYPES = {"conversation": "AGENT", "judgment": "EVALUATOR", "judgments": "EVALUATOR"}
# MLflow's names (mlflow.tracing.constant), here so that this module imports nothing of MLflow's tracing.
TRACE_ID_PREFIX = "tr-"
TRACE_SOURCE_RUN = "mlflow.sourceRun"
TRACE_SESSION = "mlflow.trace.session"


class Span:
    """A span of this process: its ids, and what it ends with (the writer process makes the MLflow
    span from the messages this process sends it)."""

    __slots__ = ("trace", "id", "outputs", "attributes", "status")

    def __init__(self, trace: int, span_id: int):
        self.trace, self.id = trace, span_id
        self.outputs: Any = None
        self.attributes: dict[str, Any] = {}
        self.status: str | None = None

    @property
    def trace_id(self) -> str:
        return TRACE_ID_PREFIX + format(self.trace, "032x")  # MLflow's id of an OpenTelemetry trace id


# The span a unit or a call made in this context is a span of (a thread starts with none, as with
# OpenTelemetry's context, which MLflow's own span API uses).
_current: ContextVar[Span | None] = ContextVar("chareval_current_span", default=None)
# Ids of its own, so that a random.seed() in a stage repeats no trace id.
_ids = random.Random()


class Unit:
    """A trace (or a span of one) being written; nothing when tracing is off."""

    def __init__(self, span: Span | None = None, tracer: Tracer | None = None):
        self._span = span
        self._tracer = tracer

    @property
    def trace_id(self) -> str | None:
        return self._span.trace_id if self._span is not None else None

    def finish(self, outputs: Any, attributes: dict[str, Any] | None = None, error: str | None = None) -> None:
        if self._span is None:
            return
        self._span.outputs = outputs
        self._span.attributes.update(attributes or {})
        if error:
            self._span.status = "ERROR"

    def close(self) -> None:
        """End a trace made by Tracer.open (it is written then)."""
        if self._span is not None and self._tracer is not None:
            self._tracer._end(self._span)
            self._span = None


class Call:
    """The LLM span of one model call (or nothing)."""

    def __init__(self, span: Span | None = None):
        self._span = span

    def answered(self, response: LLMResponse) -> None:
        if self._span is None:
            return
        usage = response.usage
        self._span.outputs = {
            "choices": [
                {
                    "message": {"role": "assistant", "content": response.text},
                    "finish_reason": "length" if response.hit_token_limit else "stop",
                }
            ],
            "model": response.model,
        }
        self._span.attributes.update(
            {
                "mlflow.llm.model": response.model,
                "mlflow.llm.provider": response.model.split("/", 1)[0],
                "mlflow.chat.tokenUsage": {
                    "input_tokens": usage.input_tokens,
                    "output_tokens": usage.output_tokens,
                    "total_tokens": usage.input_tokens + usage.output_tokens,
                },
                "mlflow.llm.cost": {"total_cost": usage.cost_usd},
                "chareval.cached": response.cached,
                "chareval.fallback": usage.fallbacks > 0,
                "chareval.retries": usage.retries,
                "chareval.latency_s": round(response.latency_s, 4),
                "chareval.queue_s": round(response.queue_s, 4),
                "chareval.thinking_tokens": usage.thinking_tokens,
                "chareval.thinking": response.thinking or "",
                "chareval.cut_at_max_tokens": response.hit_token_limit,
            }
        )


class Tracer:
    """The traces of one stage run. `Tracer()` is off.

    This process makes no MLflow span: a span's start and its end are two small messages to the
    writer process, which makes the span with MLflow's own span API, with this process's ids and
    times, so that the store gets what MLflow would have written from here, at a few microseconds
    of this process's CPU a span instead of MLflow's half a millisecond. Values are sent as they
    are (pickled when the batch leaves): callers pass objects they do not change afterwards."""

    def __init__(self, run_id: str | None = None, log_file: Path | None = None):
        """`log_file`: the job's run log, where the writer process puts its warnings once this
        process has exited."""
        self.run_id = run_id
        self._writer: TraceWriter | None = None
        if run_id is not None:
            import mlflow
            from mlflow.tracing.utils.environment import resolve_env_metadata
            from mlflow.tracking.fluent import _get_experiment_id

            active = mlflow.active_run()  # the stage's run; its experiment is the traces'
            self._uri = mlflow.get_tracking_uri()
            self._experiment = active.info.experiment_id if active else _get_experiment_id()
            # What MLflow records of this process on every trace (source, user, git), and the run link.
            self._metadata = resolve_env_metadata() | {TRACE_SOURCE_RUN: run_id}
            self._writer = shared_writer()
            if log_file is not None:
                self._writer.put(("log", str(log_file)))

    @property
    def on(self) -> bool:
        return self.run_id is not None

    def _start(
        self,
        name: str,
        span_type: str,
        inputs: Any,
        attributes: dict[str, Any],
        parent: Span | None,
        tags: dict[str, Any] | None = None,
        session: str | None = None,
    ) -> Span:
        assert self._writer is not None
        span_id = _ids.getrandbits(64) or 1
        if parent is not None:  # a span of the parent's trace: its store, tags and metadata went with the root
            span, uri, experiment, trace_tags, metadata = Span(parent.trace, span_id), None, None, None, None
        else:
            span, uri, experiment = Span(_ids.getrandbits(128) or 1, span_id), self._uri, self._experiment
            trace_tags = {k: str(v) for k, v in (tags or {}).items()}
            metadata = self._metadata | ({TRACE_SESSION: session} if session is not None else {})
        parent_id = parent.id if parent is not None else None
        start = (span.trace, span_id, parent_id, name, span_type, time.time_ns(), inputs, attributes)
        self._writer.put(("start", uri, experiment, *start, trace_tags, metadata))
        return span

    def _end(self, span: Span, error: Exception | None = None) -> None:
        assert self._writer is not None
        failure = None
        if error is not None:  # what MLflow's span API records of an exception
            stack = "".join(traceback.format_exception(error)).strip()
            failure = (type(error).__name__, str(error), stack)
        self._writer.put(("end", span.id, time.time_ns(), span.outputs, span.attributes, span.status, failure))

    @contextmanager
    def _active(self, span: Span) -> Iterator[None]:
        """`span` the current span inside; ended at the end, an exception recorded on it."""
        token = _current.set(span)
        try:
            yield
        except Exception as e:
            self._end(span, e)
            raise
        else:
            self._end(span)
        finally:
            _current.reset(token)

    @contextmanager
    def unit(
        self,
        name: str,
        kind: str,
        inputs: dict[str, Any],
        *,
        tags: dict[str, Any] | None = None,
        session: str | None = None,
        attributes: dict[str, Any] | None = None,
        parent: Unit | None = None,
    ) -> Iterator[Unit]:
        """A unit of work: a new trace linked to the stage's run, or, with `parent` (a trace opened
        by `open`, possibly in another thread) or inside another unit, a span of that trace.
        Exceptions inside mark it failed and propagate."""
        if not self.on:
            yield Unit()
            return
        parent_span = parent._span if parent is not None else _current.get()
        span = self._start(
            name,
            SPAN_TYPES.get(kind, "CHAIN"),
            inputs,
            (attributes or {}) | {names.TRACE_RUN: self.run_id},
            parent_span,
            tags=(tags or {}) | {names.TRACE_KIND: kind},
            session=session,
        )
        with self._active(span):
            yield Unit(span, self)

    def open(self, name: str, kind: str, inputs: dict[str, Any], *, tags: dict[str, Any] | None = None) -> Unit:
        """A trace that several threads add units to (`unit(..., parent=)`), closed with `close()`.
        One trace for many small units: MLflow's SQLite store spends tens of milliseconds of CPU on
        each trace it writes, a few on each span."""
        if not self.on:
            return Unit()
        span = self._start(
            name,
            SPAN_TYPES.get(kind, "CHAIN"),
            inputs,
            {names.TRACE_RUN: self.run_id},
            None,
            tags=(tags or {}) | {names.TRACE_KIND: kind},
        )
        return Unit(span, self)

    @contextmanager
    def call(self, request: LLMRequest, role: str) -> Iterator[Call]:
        """The LLM span of one model call, inside the current unit (or a trace of its own). The
        inputs are the messages exactly as this side saw them."""
        if not self.on:
            yield Call()
            return
        messages = [{"role": "system", "content": request.system}] + [m.model_dump() for m in request.messages]
        attributes = {
            "chareval.role": role,
            "chareval.requested_model": request.model,
            "chareval.max_tokens": request.max_tokens,
            "chareval.temperature": request.temperature,
            "chareval.seed": -1 if request.seed is None else request.seed,
            "chareval.response_schema": request.response_schema.__name__ if request.response_schema else "",
            names.TRACE_RUN: self.run_id,
        }
        span = self._start(
            f"{role} · {request.model}",
            "LLM",
            {"messages": messages},
            attributes,
            _current.get(),
            tags={names.TRACE_KIND: "call", "role": role},
        )
        with self._active(span):
            yield Call(span)

    def replayed(self, role: str, system: str, view: list[Any], content: str, model: str) -> None:
        """The LLM span of a call made before a fault lost its trace, rebuilt from the record (what
        that side saw, what it answered, who answered); marked chareval.rebuilt."""
        if not self.on:
            return
        span = self._start(
            f"{role} · {model}",
            "LLM",
            {"messages": [{"role": "system", "content": system}] + [m.model_dump() for m in view]},
            {"chareval.role": role, "mlflow.llm.model": model, "chareval.rebuilt": True, names.TRACE_RUN: self.run_id},
            _current.get(),
        )
        span.outputs = {"choices": [{"message": {"role": "assistant", "content": content}}], "model": model}
        self._end(span)

    def flush(self) -> None:
        """Wait until the traces and feedback made so far are in the store (another process writes
        them)."""
        if self._writer is not None:
            self._writer.flush()

    def feedback(self, trace_id: str, name: str, **assessment: Any) -> None:
        """One assessment on a trace (see log_feedback), written after the trace it is attached to.
        A trace this store does not have (the conversations were traced into another store) is
        warned about once: the verdicts stay in the run's files either way."""
        if self._writer is not None:
            self._writer.put(("feedback", self._uri, trace_id, name, assessment))


def human_labelled(experiment_id: str) -> list[JudgeCase]:
    """The conversations of an experiment that people labelled (HUMAN feedback on their traces, e.g.
    from the dashboard's Review page), as judge-check cases: the latest label per evaluator, the
    conversation rebuilt from the record its trace keeps. A case's id is the trace's, so that
    conversations of different runs (all numbered conv-001, ...) stay apart."""
    import mlflow

    flush_shared()  # conversations this process traced
    found = mlflow.search_traces(
        locations=[experiment_id],
        filter_string=f"tags.`{names.TRACE_KIND}` = 'conversation'",
        include_spans=False,
        return_type="list",
    )
    cases = []
    for info in (t.info for t in found):
        labels = sorted(
            (a for a in info.assessments if a.source.source_type == "HUMAN" and isinstance(_value(a), bool)),
            key=lambda a: a.create_time_ms,
        )
        if not labels:
            continue
        expected = {a.name: bool(_value(a)) for a in labels}  # a later label supersedes an earlier one
        root = next(s for s in mlflow.get_trace(info.trace_id).data.spans if s.parent_id is None)
        record = Conversation.model_validate(root.attributes[names.TRACE_RECORD])
        case_id = f"{info.trace_id.removeprefix('tr-')[:8]}-{record.id}"
        cases.append(
            JudgeCase(
                id=case_id,
                note="; ".join(a.rationale for a in labels if a.rationale),
                conversation=record.model_copy(update={"id": case_id}),
                expected=expected,
            )
        )
    return sorted(cases, key=lambda c: c.id)


def _value(assessment: Any) -> Any:
    feedback = getattr(assessment, "feedback", None)
    return feedback.value if feedback is not None else None
