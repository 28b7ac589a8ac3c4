"""A run's conversations, then one transcript with its context and every judgment of it."""

from __future__ import annotations

import streamlit as st

from dashboard import data, derive
from dashboard.components import (
    context_panel,
    empty,
    escape,
    judge_run_picker,
    judgments_panel,
    pick_row,
    remember,
    repair_panel,
    run_picker,
    selection,
    set_picker,
    transcript,
    uri,
)

HAS_CONVERSATIONS = (*data.MAKES_CONVERSATIONS, "evaluate", "judge_check", *data.FLOWS)

st.title("Conversations")
picked = run_picker("Run", HAS_CONVERSATIONS)
if picked is None:
    empty(
        "No conversations yet.", "python src/run.py stage=conversations context_file=<contexts.json>   # or: make run"
    )
    st.stop()
sets = data.conversation_sets(uri(), picked.run_id)
if not sets:
    empty(
        f"Run {picked.run_id[:8]} ({escape(picked.step)}) holds no conversations: "
        "pick a conversations, evaluate, pipeline, loop or sweep run.",
        f"python src/run.py stage=conversations contexts_run={picked.run_id}"
        if picked.stage == "contexts"
        else "python src/run.py stage=conversations context_file=<contexts.json>",
    )
    st.stop()
cs = set_picker(sets)
conversations = data.set_conversations(uri(), cs)
if not conversations:
    empty(
        "This run logged no conversations file yet (artifacts are logged when a stage ends).",
        f"python src/run.py stage=evaluate conversations_run={cs.source_run}",
    )
    st.stop()
judged = judge_run_picker(cs)
evaluations = data.evaluations(uri(), judged) if judged else []
contexts = data.set_contexts(uri(), cs)
if not judged:
    st.caption(f"not judged yet: python src/run.py stage=evaluate conversations_run={cs.source_run}")

rows = derive.conversation_rows(conversations, evaluations, contexts)
picked_row = pick_row(
    rows,
    "conversations.table",
    [cs.source_run, *(c.id for c in conversations)],
    column_config={"mean score": st.column_config.NumberColumn(format="%.1f")},
)
ids = [c.id for c in conversations]
if picked_row is not None:
    remember("conv", ids[picked_row])
current = selection("conv")
conversation = next((c for c in conversations if c.id == current), conversations[0])

st.divider()
left, right = st.columns([3, 2], gap="large")
mine = [e for e in evaluations if e.conversation_id == conversation.id]
with left:
    usage = conversation.usage
    st.subheader(escape(f"Transcript · {conversation.id}"))
    st.caption(
        escape(
            f"{len(conversation.messages)} messages · assistant {conversation.assistant_persona} "
            f"vs user {conversation.user_persona} · "
            f"seed {conversation.seed} · {usage.input_tokens + usage.output_tokens} tokens · ${usage.cost_usd:.4f}"
            + (f" · {usage.fallbacks} fallback(s)" if usage.fallbacks else "")
        )
    )
    transcript(conversation, mine)
with right:
    context_panel(contexts.get(conversation.context_id), conversation)
    judgments_panel(mine)

repaired = data.repairs(uri(), cs.sha).get(conversation.id) if cs.sha else None
if repaired is not None:
    st.divider()
    repair_panel(repaired)
