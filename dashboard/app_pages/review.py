"""A person labels conversations (pass/fail per evaluator, a note). Labels are appended as JudgeCase
records, the format `stage=judge_check` reads, so a judge can be measured against them, and each label
is also logged as HUMAN feedback on the conversation's MLflow trace (judge_check.labels=store reads those)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from chareval.evaluators.registry import load_all
from chareval.schemas import JudgeCase
from chareval.store import names
from dashboard import data
from dashboard.components import (
    empty,
    escape,
    pick_row,
    remember,
    run_picker,
    selection,
    set_picker,
    settings,
    transcript,
    uri,
)

CHOICES = ["not labelled", "pass", "fail"]

st.title("Review")
typed = st.text_input("Labels file (JSONL of JudgeCase records)", value=selection("labels") or str(settings().labels))
path = Path(typed).expanduser().resolve()
remember("labels", str(path))
if path.is_dir():
    st.error(escape(f"{path} is a folder: give a file name, e.g. {path / 'judge_labels.jsonl'}"))
    st.stop()
labelled = {case.id: case for case in data.labels(path)}
st.caption(escape(f"{len(labelled)} conversations labelled in {path}"))


def judge_check_results() -> None:
    st.subheader("How the judges do on these labels")
    command = (
        f"python src/run.py stage=judge_check judge_check.dataset={path}    # add models=seed for the seed's judge"
    )
    checks = data.judge_checks(uri(), path)
    if not checks:
        empty("No judge check on this labels file yet.", command)
        return
    latest = checks[0]
    report = data.json_artifact(uri(), latest.run_id, names.JUDGE_CHECK) or {}
    rows = [
        {"evaluator": ev, "judge": judge, **t}
        for ev, by_judge in report.get("accuracy", {}).items()
        for judge, t in by_judge.items()
    ]
    st.dataframe(
        rows, hide_index=True, width="stretch", column_config={"accuracy": st.column_config.NumberColumn(format="%.2f")}
    )
    fresh = latest.tags.get(names.JUDGE_CHECK_DATASET_SHA) == data.labels_sha(path)
    st.caption(
        escape(f"judge_check run {latest.run_id} of {latest.started:%Y-%m-%d %H:%M}")
        + ("" if fresh else " · the labels changed since: run the check again")
    )
    if not fresh:
        st.code(command, language="bash")


picked = run_picker("Run to label", (*data.MAKES_CONVERSATIONS, "evaluate", *data.FLOWS))
if picked is None:
    empty("No conversations to label yet.", "make run")
    judge_check_results()
    st.stop()
sets = data.conversation_sets(uri(), picked.run_id)
if not sets:
    empty("This run holds no conversations.", "python src/run.py stage=conversations context_file=<contexts.json>")
    st.stop()
cs = set_picker(sets)
conversations = data.set_conversations(uri(), cs)
if not conversations:
    st.caption("this run logged no conversations file")
    st.stop()


def case_id(conversation_id: str) -> str:
    """Unique across runs (conversation ids repeat from run to run: conv-001, ...)."""
    return f"{cs.source_run[:8]}-{conversation_id}"


rows = [
    {
        "conversation": c.id,
        "labelled": case_id(c.id) in labelled,
        "messages": len(c.messages),
        "labels": ", ".join(f"{k}: {'pass' if v else 'fail'}" for k, v in labelled[case_id(c.id)].expected.items())
        if case_id(c.id) in labelled
        else "",
    }
    for c in conversations
]
picked_row = pick_row(rows, "review.table", [cs.source_run, *(c.id for c in conversations)])
if picked_row is not None:
    remember("conv", conversations[picked_row].id)
current = selection("conv")
conversation = next((c for c in conversations if c.id == current), conversations[0])
cid = case_id(conversation.id)
existing = labelled.get(cid)
evaluators = cs.job.evaluators() or sorted(load_all())

left, right = st.columns([3, 2], gap="large")
with left:
    st.subheader(escape(f"Transcript · {conversation.id}"))
    show = st.toggle("Show the judges' verdicts", value=False, help="off by default: label first, then compare")
    judged = data.evaluations(uri(), cs.judged_by[0]) if show and cs.judged_by else []
    transcript(conversation, [e for e in judged if e.conversation_id == conversation.id])
with right:
    st.subheader("Your verdict")
    with st.form(f"label.{cid}"):
        verdicts = {}
        for name in evaluators:
            known = existing.expected.get(name) if existing else None
            verdicts[name] = st.radio(name, CHOICES, index=0 if known is None else (1 if known else 2), horizontal=True)
        note = st.text_area("Note", value=existing.note if existing else "", placeholder="why, in a sentence")
        saved = st.form_submit_button("Save label", type="primary")
    if saved:
        expected = {name: choice == "pass" for name, choice in verdicts.items() if choice != "not labelled"}
        if not expected:
            st.warning("Label at least one evaluator (pass or fail) before saving.")
        else:
            case = JudgeCase(
                id=cid, note=note, conversation=conversation.model_copy(update={"id": cid}), expected=expected
            )
            data.save_label(path, case)
            st.session_state["review.saved"] = f"saved {cid}: " + ", ".join(
                f"{k} {'pass' if v else 'fail'}" for k, v in expected.items()
            )
            if conversation.trace_id:  # also beside the judges' verdicts on its MLflow trace
                problem = data.label_trace(uri(), conversation.trace_id, expected, note)
                if problem:
                    st.session_state["review.saved"] += f" (in the file only: not on its MLflow trace: {problem})"
                else:
                    st.session_state["review.saved"] += " (and on its MLflow trace)"
            st.rerun()  # the list and the counts above show the new label
    if "review.saved" in st.session_state:
        st.success(escape(st.session_state.pop("review.saved")), icon=":material/check:")
    elif existing:
        st.caption(escape(f"labelled before: {existing.note or '(no note)'}"))

st.divider()
judge_check_results()
