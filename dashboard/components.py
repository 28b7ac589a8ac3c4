"""Pieces several pages share: the selection kept in the URL, run pickers, empty states, and the
transcript with its verdicts.

Model output is untrusted text. It reaches the page only through st.text, st.code and table cells,
which render it literally: never through markdown, HTML, labels or captions (those take our own
strings only, with any model id escaped by `escape`)."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import streamlit as st

from chareval.schemas import Context, Conversation, Evaluation, Repair
from dashboard import data, derive
from dashboard.settings import Settings

PAGES = {
    "runs": "app_pages/runs.py",
    "conversations": "app_pages/conversations.py",
    "evaluations": "app_pages/evaluations.py",
    "compare": "app_pages/compare.py",
    "models": "app_pages/models.py",
    "review": "app_pages/review.py",
}


def settings() -> Settings:
    return st.session_state["settings"]


def uri() -> str:
    return settings().tracking_uri


def escape(text: str) -> str:
    """Backslash-escape every ASCII punctuation character, so that markdown shows `text` literally."""
    return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", text)


def table_key(name: str, ids: list[str]) -> str:
    """A selectable table's key, new whenever its rows are: a selection belongs to the rows it was made
    on (Streamlit keeps it by key, so row 3 of one page would otherwise select row 3 of the next)."""
    return f"{name}.{hashlib.sha1(chr(0).join(ids).encode()).hexdigest()[:10]}"


def pick_row(rows: list[dict], name: str, ids: list[str], **options: Any) -> int | None:
    """A full-width table where one row can be selected: the selected row's index, or None."""
    event = st.dataframe(
        rows,
        hide_index=True,
        width="stretch",
        on_select="rerun",
        selection_mode="single-row",
        key=table_key(name, ids),
        **options,
    )
    return event.selection.rows[0] if event.selection.rows else None


def empty(message: str, command: str) -> None:
    """An empty state that says which command fills it."""
    st.info(message, icon=":material/info:")
    st.code(command, language="bash")


# --- the selection, kept in the URL so that a link can be shared -------------------------------


def selection(key: str) -> str | None:
    """The URL's value, else the session's (the sidebar navigation drops query parameters)."""
    value = st.query_params.get(key) or st.session_state.get(f"selected.{key}")
    if value:
        remember(key, value)
    return value


def remember(key: str, value: str | None) -> None:
    if value:
        st.session_state[f"selected.{key}"] = value
        st.query_params[key] = value
    else:
        st.session_state.pop(f"selected.{key}", None)
        st.query_params.pop(key, None)


def run_picker(label: str, stages: tuple[str, ...], key: str = "run") -> data.RunView | None:
    """A run of the given stages or flows: the selected one (any run, e.g. from a link), else the
    newest finished one. The list offers top-level runs: a flow's stages are chosen inside it."""
    current = selection(key)
    runs = [r for r in data.recent(uri()) if r.stage in stages and not r.parent]
    picked = data.run(uri(), current) if current else None
    if picked and picked.run_id not in {r.run_id for r in runs}:
        runs.insert(0, picked)
    if not runs:
        return None
    ids = [r.run_id for r in runs]
    by_id = {r.run_id: r for r in runs}
    if current not in ids:
        current = next((r.run_id for r in runs if r.status == "FINISHED"), ids[0])
    choice = st.selectbox(
        label, ids, index=ids.index(current), format_func=lambda i: by_id[i].describe(), key=f"picker.{key}.{current}"
    )
    if choice != current:  # remembered only when the reader picks: the widget's key stays put until then
        remember(key, choice)
    return by_id[choice]


def set_picker(sets: list[data.ConversationSet], key: str = "set") -> data.ConversationSet:
    """Which conversations of a flow (a pipeline has one set, a loop or a sweep several)."""
    if len(sets) == 1:
        return sets[0]
    labels = [s.label for s in sets]
    current = selection(key)
    default = current if current in labels else labels[0]
    choice = st.selectbox("Conversations of", labels, index=labels.index(default), key=f"picker.{key}.{current}")
    if choice != default:
        remember(key, choice)
    return sets[labels.index(choice)]


def judge_run_picker(cs: data.ConversationSet, key: str = "judged") -> str | None:
    """Which evaluate run's verdicts to show (the newest by default)."""
    if not cs.judged_by:
        return None
    if len(cs.judged_by) == 1:
        return cs.judged_by[0]
    runs: dict[str, data.RunView | None] = {i: data.run(uri(), i) for i in cs.judged_by}
    current = selection(key)
    default = current if current in runs else cs.judged_by[0]
    choice = st.selectbox(
        "Verdicts of",
        list(runs),
        index=list(runs).index(default),
        key=f"picker.{key}.{current}",
        format_func=lambda i: _verdicts_label(runs[i]) or i,
    )
    if choice != default:
        remember(key, choice)
    return choice


def go(page: str, **params: str) -> None:
    """Open another page with these selections."""
    for key, value in params.items():
        remember(key, value)
    st.switch_page(PAGES[page], query_params={k: v for k, v in st.query_params.to_dict().items()})


# --- a conversation ------------------------------------------------------------------------------


def _provider(model: str) -> str:
    return model.split("/", 1)[0]


def transcript(conversation: Conversation, evaluations: list[Evaluation]) -> None:
    """Chat bubbles in order with turn numbers and models; thinking collapsed; fallbacks, errors and
    the turns that verdicts cite (or where the character slipped) marked on the message itself."""
    marks = derive.marks(evaluations)
    configured = {"assistant": conversation.assistant_model, "user": conversation.user_model}
    with st.chat_message("user", avatar=":material/flag:"):
        st.caption("opening prompt: shown to the assistant as the user's first turn")
        st.text(conversation.opening_prompt)
    if conversation.parent_id is not None:
        st.info(
            escape(
                f"a branch of {conversation.parent_id}: turns before {conversation.branched_at} are the parent's, "
                "word for word; the rest was played anew"
            ),
            icon=":material/call_split:",
        )
    for m in conversation.messages:
        with st.chat_message(m.role):
            st.caption(escape(derive.message_caption(m, conversation)))
            if _provider(m.model) != _provider(configured[m.role]):
                st.warning(
                    escape(f"fallback: answered by {m.model} instead of {configured[m.role]}"),
                    icon=":material/swap_horiz:",
                )
            if m.thinking:
                with st.expander("thinking"):
                    st.text(m.thinking)
            st.text(m.content)
            if m.assessment is not None:
                check = f"live check: {m.assessment.verdict.replace('_', ' ')} · {m.assessment.note}"
                (st.warning if m.assessment.verdict != "held" else st.caption)(escape(check))
            if conversation.breach_turn == m.turn:
                st.error(
                    "breach: the boundary broke here and the conversation stopped (conversations.stop_on_breach)",
                    icon=":material/dangerous:",
                )
            for mark in marks.get(m.turn, []):
                if mark.kind == "slip":
                    st.error(escape(mark.text()), icon=":material/report:")
                elif mark.passed:
                    st.success(escape(mark.text()), icon=":material/check:")
                else:
                    st.warning(escape(mark.text()), icon=":material/flag:")
    if conversation.error:
        st.error("This conversation stopped with an error:", icon=":material/error:")
        st.code(conversation.error, language=None, wrap_lines=True)
    stray = sorted(t for t in marks if t not in {m.turn for m in conversation.messages})
    if stray:
        st.caption(f"verdicts cite turns that are not in the transcript: {', '.join(map(str, stray))}")


def context_panel(context: Context | None, conversation: Conversation) -> None:
    st.subheader("Context")
    if context is None:
        st.caption(
            escape(f"context {conversation.context_id}: its contexts file is not in MLflow (no contexts run found)")
        )
        characters_panel(conversation)
        return
    st.caption(escape(f"{context.id} · written by {context.model}"))
    st.text(context.title)
    st.markdown("**Scenario**")
    st.text(context.scenario)
    st.markdown("**User goal**")
    st.text(context.user_goal)
    st.markdown(f"**Supporting documents** ({len(context.documents)})")
    for number, document in enumerate(context.documents, start=1):
        with st.expander(f"document {number}"):
            st.text(document.title)
            st.text(document.content)
    characters_panel(conversation)


def characters_panel(conversation: Conversation) -> None:
    """What the judges were told about the two sides (the rubrics are filled from it)."""
    card = conversation.characters
    if card is None:
        return
    with st.expander("the characters, as the judges read them"):
        st.text(f"{card.assistant_name}, {card.assistant_role}. Voice: {card.assistant_voice}")
        st.text("Boundaries:\n" + "\n".join(f"- {b}" for b in card.assistant_boundaries))
        st.text(f"The user ({card.user_name}): {card.user_pressure}. Goal: {card.user_goal}")


def judgments_panel(evaluations: list[Evaluation]) -> None:
    st.subheader("Judgments")
    if not evaluations:
        st.caption("no judgment of this conversation in the chosen evaluate run")
        return
    st.dataframe(derive.judgment_rows(evaluations), hide_index=True, width="stretch")
    for e in sorted(evaluations, key=lambda e: (e.evaluator, e.judge_model, e.sample)):
        verdict = "error" if e.error else ("pass" if e.passed else "fail")
        with st.expander(escape(f"{e.evaluator} · {verdict} · {e.judge_model} · sample {e.sample}")):
            if e.error:
                st.code(e.error, language=None, wrap_lines=True)
                if e.raw_text:
                    st.caption("raw answer")
                    st.code(e.raw_text, language=None, wrap_lines=True)
            else:
                st.text(e.rationale or "")


def repair_panel(repair: Repair) -> None:
    """A repaired conversation: the slipped turn and the teacher's repair side by side, each with the
    verdicts it got (each evaluator's mean score). Model text is shown as text only."""
    st.subheader(escape(f"Slip and repair · turn {repair.turn}"))
    if repair.error:
        st.caption("the repair failed")
        st.code(repair.error, language=None, wrap_lines=True)
        return
    outcome = "passes when judged again" if repair.passed_after else "still fails when judged again"
    st.caption(escape(f"repaired by {repair.teacher_model}: {outcome}; {'kept' if repair.kept else 'not kept'}"))
    slip, fix = st.columns(2, gap="medium")
    for column, title, text, scores in (
        (slip, "The slip", repair.original, repair.before),
        (fix, "The repair", repair.repaired or "", repair.after),
    ):
        with column:
            st.markdown(f"**{title}**")
            st.text(text)
            st.dataframe(
                [{"evaluator": name, "mean score": score} for name, score in sorted(scores.items())],
                hide_index=True,
                width="stretch",
            )


def _verdicts_label(run: data.RunView | None) -> str | None:
    return f"{run.describe()} · judges: {', '.join(run.judges())}" if run else None
