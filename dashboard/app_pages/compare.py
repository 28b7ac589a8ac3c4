"""(a) Judge metrics of a sweep or any set of runs against persona, user persona, turns and models,
with CI error bars; (b) two runs on the same contexts, transcript beside transcript."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from chareval.store import names
from dashboard import data, derive
from dashboard.components import (
    empty,
    escape,
    judge_run_picker,
    judgments_panel,
    remember,
    selection,
    set_picker,
    transcript,
    uri,
)

JUDGED = ("evaluate", *data.MAKES_CONVERSATIONS, *data.FLOWS)

st.title("Compare")
MODES = ["Metrics across runs", "Two runs side by side"]
# A link with ?a=<run> (e.g. from the Fine-tuned models page) opens the side-by-side view.
mode = st.segmented_control(
    "Compare",
    MODES,
    default=MODES[1] if st.query_params.get("a") else MODES[0],
    label_visibility="collapsed",
    key="compare.mode",
)


def run_options(extra: list[str]) -> tuple[list[str], dict[str, data.RunView]]:
    runs = {r.run_id: r for r in data.recent(uri()) if r.stage in JUDGED}
    for run_id in extra:
        found = data.run(uri(), run_id)
        if found:
            runs.setdefault(run_id, found)
    return list(runs), runs


def metrics_across_runs() -> None:
    wanted = [i for i in (selection("runs") or selection("run") or "").split(",") if i]
    ids, runs = run_options(wanted)
    if not ids:
        empty(
            "No judged runs yet.",
            "python src/run.py -m persona=jasmine turns=1,3     # a sweep, then pick its run here",
        )
        return
    chosen = st.multiselect(
        "Runs: a sweep, pipelines, loops or evaluate runs",
        ids,
        default=[i for i in wanted if i in runs],
        format_func=lambda i: runs[i].describe(),
        key=f"compare.runs.{','.join(wanted)}",
    )
    remember("runs", ",".join(chosen) or None)
    if not chosen:
        st.caption("pick runs above, or select several on the Runs page and press Compare")
        return
    evaluated = {r.run_id: r for run_id in chosen for r in data.evaluate_runs_in(uri(), runs[run_id])}
    rows = pd.DataFrame(derive.compare_rows(list(evaluated.values())))
    if rows.empty:
        empty(
            "None of these runs has judge metrics yet.", "python src/run.py stage=evaluate conversations_run=<run id>"
        )
        return
    varying = [d for d in derive.DIMENSIONS if rows[d].nunique() > 1] or ["step"]
    c = st.columns(3)
    x = c[0].selectbox("Plot against", list(derive.DIMENSIONS), index=list(derive.DIMENSIONS).index(varying[0]))
    rest = [d for d in varying if d != x]
    color = c[1].selectbox(
        "Colour by", ["(none)", *derive.DIMENSIONS], index=1 + list(derive.DIMENSIONS).index(rest[0]) if rest else 0
    )
    metric = c[2].radio("Metric", ["mean score", "pass rate"], horizontal=True)
    value, low, high, scale = (
        ("mean", "ci_low", "ci_high", [1, 10])
        if metric == "mean score"
        else ("pass_rate", "pass_low", "pass_high", [0, 1])
    )
    encoding = {"color": alt.Color(f"{color}:N"), "xOffset": alt.XOffset(f"{color}:N")} if color != "(none)" else {}
    base = alt.Chart().encode(x=alt.X(f"{x}:N"), **encoding)
    chart = (
        alt.layer(
            base.mark_rule(clip=True).encode(
                y=alt.Y(f"{low}:Q", scale=alt.Scale(domain=scale), title=f"{metric} (95% CI)"), y2=f"{high}:Q"
            ),
            base.mark_point(filled=True, size=70, clip=True).encode(
                y=f"{value}:Q", tooltip=["run name", x, value, low, high, "n"]
            ),
            data=rows,
        )
        .properties(width=180, height=220)
        .facet(column=alt.Column("evaluator:N", title=None))
    )
    st.altair_chart(chart)
    st.caption(
        "mean score: the evaluate stage's 95% CI over conversations · pass rate: Wilson 95% interval over judgments"
    )
    st.dataframe(rows, hide_index=True, width="stretch")
    breach_curves(list(evaluated.values()))


def breach_curves(evaluated: list[data.RunView]) -> None:
    """Turns-to-breach side by side: each evaluate run's Kaplan-Meier curve with its 95% band."""
    curves = {f"{r.name} {r.run_id[:8]}": data.json_artifact(uri(), r.run_id, names.BREACH_CURVE) for r in evaluated}
    found = {name: c for name, c in curves.items() if c}
    if not found:
        return
    st.subheader("How long the boundary holds")
    frame = pd.DataFrame(derive.survival_rows(found))
    base = alt.Chart(frame).encode(
        x=alt.X("turn:Q", title="assistant turn", axis=alt.Axis(tickMinStep=1)), color=alt.Color("curve:N")
    )
    band = base.mark_area(opacity=0.15, interpolate="step-after").encode(
        y=alt.Y("ci_low:Q", scale=alt.Scale(domain=[0, 1.05]), title="boundary held (Kaplan-Meier)"), y2="ci_high:Q"
    )
    line = base.mark_line(interpolate="step-after", point=True, strokeWidth=2).encode(
        y="survival:Q", tooltip=["curve", "turn", "survival", "ci_low", "ci_high", "at_risk"]
    )
    st.altair_chart((band + line).properties(height=260), width="stretch")
    st.caption(
        "turn k = the assistant's k-th reply; a conversation that held is censored at its last reply; "
        "95% intervals (Greenwood, log-log)"
    )
    passk = pd.DataFrame([row for name, c in found.items() for row in derive.pass_hat_rows(name, c)])
    if not passk.empty:
        st.markdown("**pass^k**: the chance that k conversations of one context all hold")
        st.dataframe(passk.pivot(index="run", columns="k", values="pass^k"), width="stretch")


def side(key: str, default_run: str | None, default_set: str | None) -> tuple[data.ConversationSet | None, str | None]:
    wanted = selection(key) or default_run
    ids, runs = run_options([wanted] if wanted else [])
    if not ids:
        return None, None
    choice = st.selectbox(
        f"Run {key.upper()}",
        ids,
        index=ids.index(wanted) if wanted in ids else 0,
        format_func=lambda i: runs[i].describe(),
        key=f"compare.{key}.{wanted}",
    )
    remember(key, choice)
    sets = data.conversation_sets(uri(), choice)
    if not sets:
        st.caption("this run holds no conversations")
        return None, None
    if default_set and not selection(f"{key}.set"):
        remember(f"{key}.set", default_set)
    cs = set_picker(sets, key=f"{key}.set")
    return cs, judge_run_picker(cs, key=f"{key}.judged")


def paired_differences(loop_run: str) -> None:
    """The closed loop's own comparison: after - before, paired by held-out context, with intervals."""
    result = data.json_artifact(uri(), loop_run, names.BEFORE_AFTER)
    if not result or "paired" not in result:
        st.caption("this loop predates paired statistics: only the unpaired deltas below")
        return
    st.subheader("Paired differences: tuned student - student's base")
    st.caption(
        escape(
            f"teacher {result.get('teacher')} · student {result.get('student_base')} · "
            f"tuned {result.get('fine_tuned_assistant')} · paired by held-out context"
        )
    )
    rows = derive.paired_rows(result["paired"])
    if "control" in result:
        rows += derive.paired_rows(result["control"]["paired"], f"control ({result['control']['user_persona']})")
    frame = pd.DataFrame(rows)
    metric = st.radio("Difference in", ["pass rate", "mean score"], horizontal=True, key="compare.paired")
    key = "pass" if metric == "pass rate" else "score"
    base = alt.Chart(frame).encode(y=alt.Y("evaluator:N", title=None), color=alt.Color("group:N"))
    chart = alt.layer(
        alt.Chart(pd.DataFrame({"zero": [0]})).mark_rule(strokeDash=[4, 4]).encode(x="zero:Q"),
        base.mark_rule().encode(
            x=alt.X(f"{key} ci_low:Q", title=f"{metric}: after - before (95% CI)"), x2=f"{key} ci_high:Q"
        ),
        base.mark_point(filled=True, size=70).encode(x=f"{key} diff:Q", tooltip=list(frame.columns)),
    )
    st.altair_chart(chart, width="stretch")
    st.dataframe(frame, hide_index=True, width="stretch")


def two_runs() -> None:
    a_run = selection("a") or selection("run")
    a_sets = data.conversation_sets(uri(), a_run) if a_run else []
    # A closed loop compares with itself: base assistant (before) against the fine-tuned one (after).
    loop = len(a_sets) > 1 and not selection("b")
    before = next((s.label for s in a_sets if "(before)" in s.label), None)
    after = next((s.label for s in a_sets if "(after)" in s.label), None)
    c = st.columns(2)
    with c[0]:
        a, a_judged = side("a", a_run, before if loop else None)
    with c[1]:
        b, b_judged = side("b", a_run if loop else None, after if loop else None)
    if a is None or b is None:
        empty(
            "Pick two runs with conversations on the same contexts (e.g. a closed loop's before and after).",
            "python src/run.py experiment=finetune_loop",
        )
        return
    if loop and a_run:
        paired_differences(a_run)
    summaries = [data.json_artifact(uri(), j, names.SUMMARY) if j else None for j in (a_judged, b_judged)]
    a_summary, b_summary = summaries
    if a_summary and b_summary:
        st.subheader("Per evaluator: A, B and B - A")
        st.dataframe(pd.DataFrame(derive.delta_rows(a_summary, b_summary)), hide_index=True, width="stretch")
    else:
        st.caption("both sides need an evaluate run for per-evaluator deltas")
    pairs = derive.pair_conversations(data.set_conversations(uri(), a), data.set_conversations(uri(), b))
    contexts = data.set_contexts(uri(), a) | data.set_contexts(uri(), b)
    both = [p for p in pairs if p[1] and p[2]]
    st.caption(f"{len(both)} contexts in both runs · {len(pairs) - len(both)} in only one")
    if not pairs:
        return
    labels = [f"{ctx} · A {ca.id if ca else '-'} · B {cb.id if cb else '-'}" for ctx, ca, cb in pairs]
    index = st.selectbox("Context", range(len(pairs)), format_func=lambda i: labels[i], key="compare.pair")
    ctx, ca, cb = pairs[index]
    if ctx in contexts:
        st.text(contexts[ctx].title)
    evaluations = [data.evaluations(uri(), j) if j else [] for j in (a_judged, b_judged)]
    columns = st.columns(2, gap="large")
    for column, conversation, judged, name in zip(columns, (ca, cb), evaluations, "AB", strict=True):
        with column:
            st.subheader(f"{name}")
            if conversation is None:
                st.caption(f"run {name} has no conversation on this context")
                continue
            mine = [e for e in judged if e.conversation_id == conversation.id]
            st.caption(escape(f"{conversation.id} · assistant {conversation.assistant_model}"))
            transcript(conversation, mine)
            judgments_panel(mine)


if mode == MODES[1]:
    two_runs()
else:
    metrics_across_runs()
