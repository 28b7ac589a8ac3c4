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
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

from chareval.schemas import Conversation, JudgeCase
from chareval.store import names
from chareval.store.trace_writer import flush_shared, route_to_writer, try_feedback

if TYPE_CHECKING:
    from chareval.llm.base import LLMRequest, LLMResponse

log = logging.getLogger(__name__)

# The root span of a conversation's trace keeps the whole Conversation record here, so that a
# later process (judge_check reading labels from the store) can rebuild it from the trace alone.


# The stage run on every span: an interrupted trace (its root never ended) has no run link or tags in
# the store, only the spans that ended; this is how a resume finds it (see trace_repair).
SPAN_TYPES = {"conversation": "AGENT", "judgment": "EVALUATOR", "judgments": "EVALUATOR"}


class Unit:
    """A trace (or a span of one) being written; nothing when tracing is off."""

    def __init__(self, span: Any = None):
        self._span = span

    @property
    def trace_id(self) -> str | None:
        return self._span.trace_id if self._span is not None else None

    def finish(self, outputs: Any, attributes: dict[str, Any] | None = None, error: str | None = None) -> None:
        if self._span is None:
            return
        self._span.set_outputs(outputs)
        if attributes:
            self._span.set_attributes(attributes)
        if error:
            self._span.set_status("ERROR")

    def close(self) -> None:
        """End a trace made by Tracer.open (it is written then)."""
        if self._span is not None:
            self._span.end()
            self._span = None


class Call:
    """The LLM span of one model call (or nothing)."""

    def __init__(self, span: Any = None):
        self._span = span

    def answered(self, response: LLMResponse) -> None:
        if self._span is None:
            return
        usage = response.usage
        self._span.set_outputs(
            {
                "choices": [
                    {
                        "message": {"role": "assistant", "content": response.text},
                        "finish_reason": "length" if response.hit_token_limit else "stop",
                    }
                ],
                "model": response.model,
            }
        )
        self._span.set_attributes(
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
    """The traces of one stage run. `Tracer()` is off."""

    def __init__(self, run_id: str | None = None):
        self.run_id = run_id
        self._warned = threading.Event()
        # The writer process, or None where MLflow writes the traces in this process itself.
        self._writer = route_to_writer() if run_id is not None else None

    @property
    def on(self) -> bool:
        return self.run_id is not None

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
        by `open`, possibly in another thread), a span of that trace. Exceptions inside mark it
        failed and propagate."""
        if not self.on:
            yield Unit()
            return
        import mlflow
        from mlflow.tracing.provider import safe_set_span_in_context

        span_type = SPAN_TYPES.get(kind, "CHAIN")
        parent_span = parent._span if parent is not None else None
        nested = parent_span is not None
        with ExitStack() as stack:
            if parent_span is not None:  # the parent's trace, which another thread may have opened
                stack.enter_context(safe_set_span_in_context(parent_span))
            span = stack.enter_context(
                mlflow.start_span(name=name, span_type=span_type, run_id=None if nested else self.run_id)
            )
            span.set_inputs(inputs)
            span.set_attributes((attributes or {}) | {names.TRACE_RUN: self.run_id})
            if not nested:
                mlflow.update_current_trace(
                    tags={k: str(v) for k, v in ((tags or {}) | {names.TRACE_KIND: kind}).items()}, session_id=session
                )
            yield Unit(span)

    def open(self, name: str, kind: str, inputs: dict[str, Any], *, tags: dict[str, Any] | None = None) -> Unit:
        """A trace that several threads add units to (`unit(..., parent=)`), closed with `close()`.
        One trace for many small units: MLflow's SQLite store spends tens of milliseconds of CPU on
        each trace it writes, a few on each span."""
        if not self.on:
            return Unit()
        import mlflow

        span = mlflow.start_span_no_context(
            name,
            span_type=SPAN_TYPES.get(kind, "CHAIN"),
            inputs=inputs,
            tags={k: str(v) for k, v in ((tags or {}) | {names.TRACE_KIND: kind}).items()},
            metadata={"mlflow.sourceRun": self.run_id},
            attributes={names.TRACE_RUN: self.run_id},
        )
        return Unit(span)

    @contextmanager
    def call(self, request: LLMRequest, role: str) -> Iterator[Call]:
        """The LLM span of one model call, inside the current unit (or a trace of its own). The
        inputs are the messages exactly as this side saw them."""
        if not self.on:
            yield Call()
            return
        import mlflow

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
        root = mlflow.get_current_active_span() is None
        with mlflow.start_span(
            name=f"{role} · {request.model}", span_type="LLM", run_id=self.run_id if root else None
        ) as span:
            span.set_inputs({"messages": messages})
            span.set_attributes(attributes)
            if root:
                mlflow.update_current_trace(tags={names.TRACE_KIND: "call", "role": role})
            yield Call(span)

    def replayed(self, role: str, system: str, view: list[Any], content: str, model: str) -> None:
        """The LLM span of a call made before a fault lost its trace, rebuilt from the record (what
        that side saw, what it answered, who answered); marked chareval.rebuilt."""
        if not self.on:
            return
        import mlflow

        with mlflow.start_span(name=f"{role} · {model}", span_type="LLM") as span:
            span.set_inputs({"messages": [{"role": "system", "content": system}] + [m.model_dump() for m in view]})
            span.set_outputs({"choices": [{"message": {"role": "assistant", "content": content}}], "model": model})
            span.set_attributes(
                {
                    "chareval.role": role,
                    "mlflow.llm.model": model,
                    "chareval.rebuilt": True,
                    names.TRACE_RUN: self.run_id,
                }
            )

    def flush(self) -> None:
        """Wait until the traces and feedback made so far are in the store (they are written by
        another process, or by a thread of MLflow's)."""
        if not self.on:
            return
        if self._writer is not None:
            self._writer.flush()
            return
        import mlflow

        mlflow.flush_trace_async_logging()

    def feedback(self, trace_id: str, name: str, **assessment: Any) -> None:
        """One assessment on a trace (see log_feedback), written after the trace it is attached to.
        A trace this store does not have (the conversations were traced into another store) is
        warned about once: the verdicts stay in the run's files either way."""
        if not self.on:
            return
        if self._writer is not None:
            import mlflow

            self._writer.put(("feedback", mlflow.get_tracking_uri(), trace_id, name, assessment))
            return
        warning = try_feedback(trace_id, name, assessment)
        if warning and not self._warned.is_set():
            self._warned.set()
            log.warning("%s", warning)


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
