"""Tracing after a fault. A stage appends each record as its item finishes, while MLflow writes traces
in the background, span by span: a fault can part the two. A full disk or a dead tracking server
leaves records whose traces never reached the store; kill -9 leaves traces IN_PROGRESS forever (their
root span never ended); a record lost with the disk leaves a trace nothing points to, and the resume
traces that item again.

A resumed stage (it holds the run folder's lock, so no process of the earlier runs is alive) mends
this before new work starts:
- an interrupted trace of the folder's earlier runs is closed as an error (its root span written with
  status ERROR) and its kind set to `interrupted`: it stays, showing how far the item got;
- a finished record whose trace is missing or unfinished gets a complete one, rebuilt from the
  record by the stage, and the record points to it (the broken trace is deleted);
- a complete trace of the folder's runs of the stage's kind that no record points to is deleted:
  each item keeps exactly one trace."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chareval.store import names
from chareval.store.trace_writer import flush_shared

log = logging.getLogger(__name__)
INTERRUPTED = "interrupted"


@dataclass
class Repair:
    closed: int = 0  # interrupted traces closed as errors
    rebuilt: int = 0  # records given a complete trace
    deleted: int = 0  # traces nothing points to

    def __bool__(self) -> bool:
        return bool(self.closed or self.rebuilt or self.deleted)

    def describe(self) -> str:
        return (
            f"tracing repaired: {self.closed} interrupted trace(s) closed as errors, {self.rebuilt} record(s) traced"
            f" again, {self.deleted} trace(s) no record points to deleted"
        )


def experiment_of(run_id: str) -> str:
    from mlflow.tracking import MlflowClient

    return MlflowClient().get_run(run_id).info.experiment_id


def earlier_runs(run_dir: Path, experiment_id: str, current: str | None) -> list[str]:
    """Every run of this run folder but the current one (killed, failed or finished), once the
    traces this process has sent are written (an earlier run of the folder may be this process's)."""
    from mlflow.tracking import MlflowClient

    flush_shared()

    folder = str(run_dir).replace("'", "")
    runs = MlflowClient().search_runs([experiment_id], f"tags.`{names.RUN_DIR}` = '{folder}'", max_results=1000)
    return [r.info.run_id for r in runs if r.info.run_id != current]


def _all_traces(experiment_id: str, **query: Any) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client, found, token = MlflowClient(), [], None
    while True:
        page = client.search_traces(locations=[experiment_id], max_results=500, page_token=token, **query)
        found += list(page)
        token = page.token
        if not token:
            return found


def close_interrupted(experiment_id: str, run_ids: list[str]) -> int:
    """Close the IN_PROGRESS traces whose spans belong to `run_ids` as errors (kind `interrupted`)."""
    if not run_ids:
        return 0
    from mlflow.entities import Span
    from mlflow.tracing.client import TracingClient

    client, closed = TracingClient(), 0
    for trace in _all_traces(experiment_id, filter_string="trace.status = 'IN_PROGRESS'"):
        spans = trace.data.spans
        if not any(_json(s.attributes.get(names.TRACE_RUN)) in run_ids for s in spans):
            continue
        ids = {s.span_id for s in spans}
        root = next((s for s in spans if s.parent_id is None), None)
        if root is None:  # the root never ended: write it, ended now, as an error
            child = next(s for s in spans if s.parent_id not in ids).to_dict()
            client.log_spans(
                experiment_id,
                [
                    Span.from_dict(
                        child
                        | {
                            "span_id": child["parent_span_id"],
                            "parent_span_id": None,
                            "name": "interrupted",
                            "start_time_unix_nano": min(s.start_time_ns for s in spans),
                            "end_time_unix_nano": time.time_ns(),
                            "events": [],
                            "status": {"code": "STATUS_CODE_ERROR", "message": "interrupted: its process was killed"},
                            "attributes": {
                                "mlflow.traceRequestId": json.dumps(trace.info.trace_id),
                                "mlflow.spanType": json.dumps("CHAIN"),
                                names.TRACE_RUN: child["attributes"].get(names.TRACE_RUN, "null"),
                            },
                        }
                    )
                ],
            )
        client.set_trace_tag(trace.info.trace_id, names.TRACE_KIND, INTERRUPTED)
        closed += 1
    return closed


def trace_infos(trace_ids: list[str] | set[str]) -> dict[str, Any]:
    """The store's TraceInfo of each of these traces it holds, in one query (a resume checks every
    finished record's trace: one call a trace was 4 ms each on SQLite, a round trip each to a
    tracking server). A store without the batch call (an older server) is asked trace by trace."""
    from mlflow.tracing.client import TracingClient

    client, ids = TracingClient(), list(dict.fromkeys(trace_ids))
    if not ids:
        return {}
    try:
        return {info.trace_id: info for info in client.store.batch_get_trace_infos(ids)}
    except Exception:  # noqa: BLE001 (not implemented, or an endpoint the server lacks)
        found = {}
        for trace_id in ids:
            try:
                found[trace_id] = client.get_trace_info(trace_id)
            except Exception:  # noqa: BLE001 (not found: the store says so with an exception of its own)
                continue
        return found


def missing_or_unfinished(trace_ids: list[str]) -> set[str]:
    """The trace ids the store lacks, or holds unfinished."""
    held = trace_infos(trace_ids)
    return {t for t in trace_ids if t not in held or held[t].state.value == "IN_PROGRESS"}


def unreferenced(experiment_id: str, run_ids: list[str], kind: str, referenced: set[str]) -> list[str]:
    """Complete traces of `kind` linked to `run_ids` that no record points to."""
    found = []
    for run_id in run_ids:
        for trace in _all_traces(experiment_id, run_id=run_id, include_spans=False):
            info = trace.info
            if (
                info.tags.get(names.TRACE_KIND) == kind
                and info.trace_id not in referenced
                and info.state.value != "IN_PROGRESS"
            ):
                found.append(info.trace_id)
    return found


def drop_feedback(trace_ids: set[str], evaluation_ids: set[str]) -> int:
    """Verdicts attached to conversation traces by a run killed before it wrote their records: the
    resume judges those items again, and each verdict must appear once."""
    import mlflow

    dropped = 0
    for trace_id, info in trace_infos(trace_ids).items():  # a trace in another store: nothing of ours on it
        for assessment in info.assessments:
            if _json((assessment.metadata or {}).get("evaluation_id")) in evaluation_ids:
                mlflow.delete_assessment(trace_id, assessment.assessment_id)
                dropped += 1
    return dropped


def delete(experiment_id: str, trace_ids: list[str]) -> int:
    if not trace_ids:
        return 0
    from mlflow.tracking import MlflowClient

    return MlflowClient().delete_traces(experiment_id, trace_ids=list(trace_ids))


def _json(value: Any) -> Any:
    try:
        return json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return value
