"""The dashboard's reads (chareval.store.read, cached with st.cache_data until the sidebar's Refresh
button clears them) and its one write: a label on the Review page. Nothing is recomputed and no model
is called."""

from __future__ import annotations

import getpass
from pathlib import Path

import mlflow
import streamlit as st

from chareval.io import append_jsonl
from chareval.schemas import JudgeCase
from chareval.store import read
from chareval.store.read import (  # the types and pure helpers the pages use, re-exported
    FLOWS,
    MAKES_CONVERSATIONS,
    PAGE_SIZE,
    ConversationSet,
    RunFilter,
    RunView,
    facets,
    labels,
    labels_sha,
    quote,
)
from chareval.store.trace_writer import log_feedback
from chareval.store.writer_registry import wait_for_ended

__all__ = ["FLOWS", "MAKES_CONVERSATIONS", "PAGE_SIZE", "ConversationSet", "RunFilter", "RunView", "facets", "quote"]

_cached = st.cache_data(show_spinner=False)

experiments = _cached(read.experiments)
search = _cached(read.search)
find = _cached(read.find)
run = _cached(read.run)
artifact_file = _cached(read.artifact_file)
input_artifact = _cached(read.input_artifact)
conversations = _cached(read.conversations)
judge_cases = _cached(read.judge_cases)
evaluations = _cached(read.evaluations)
contexts = _cached(read.contexts)
json_artifact = _cached(read.json_artifact)
conversation_sets = _cached(read.conversation_sets)
repairs = _cached(read.repairs)
set_conversations = _cached(read.set_conversations)
set_contexts = _cached(read.set_contexts)
evaluate_runs_in = _cached(read.evaluate_runs_in)
finetuned_models = _cached(read.finetuned_models)
loops_of = _cached(read.loops_of)
judge_checks = _cached(read.judge_checks)
recent = _cached(read.recent)
children = _cached(read.children)
descendants = _cached(read.descendants)
metric_history = _cached(read.metric_history)
# labels and labels_sha read a local file the Review page writes: never cached.
__all__ += ["labels", "labels_sha"]


def clear_caches() -> None:
    st.cache_data.clear()


def save_label(path: Path, case: JudgeCase) -> None:
    append_jsonl(path, case)  # appended and fsynced: a label once saved is not lost


def label_trace(uri: str, trace_id: str, expected: dict[str, bool], note: str) -> str | None:
    """Each label as HUMAN feedback on the conversation's trace (what `stage=judge_check
    judge_check.labels=store` reads, and the MLflow UI shows beside the judges' verdicts). Returns
    why it could not be attached, or None."""
    mlflow.set_tracking_uri(uri)
    wait_for_ended(uri)  # the trace of a run that has just ended may still be on its way to the store
    try:
        for evaluator, passed in expected.items():
            log_feedback(trace_id, evaluator, source=("HUMAN", labeller()), value=passed, rationale=note or None)
    except Exception as e:  # the trace is in another store (or was never written)
        return str(e).splitlines()[0][:300]
    return None


def labeller() -> str:
    """Who labels: the account the dashboard runs under."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "dashboard"
