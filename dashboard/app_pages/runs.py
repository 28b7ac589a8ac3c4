"""Every stage, pipeline, loop and sweep run, newest first, filtered in MLflow and paged."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from chareval import PROJECT_ROOT
from chareval.store import names
from dashboard import data
from dashboard.components import PAGES, empty, remember, settings, table_key, uri

STATUSES = ["RUNNING", "FINISHED", "FAILED", "KILLED"]
COUNTS = {  # column -> metric
    "contexts": "contexts.count",
    "conversations": "conversations.count",
    "examples": "prepare.examples",
    "judgments": "evaluate.n_records",
}
ERRORS = ("contexts.n_errors", "conversations.n_errors", "evaluate.n_errors")

st.title("Runs")

experiment_names = data.experiments(uri())
state = st.session_state


def chosen(key: str) -> str | None:
    return state.get(f"runs.{key}")


# The filters as they stand (widget values from the last interaction), so that the search runs
# first and the choices offered are the values of the runs found (plus whatever is chosen).
dates = state.get("runs.dates") or ()
since, until = (tuple(dates) + (None, None))[:2]
flt = data.RunFilter(
    tuple(i for i, n in experiment_names.items() if n in (chosen("experiment") or [])),
    chosen("stage"),
    chosen("status"),
    chosen("persona"),
    chosen("user_persona"),
    chosen("turns"),
    chosen("models"),
    chosen("assistant"),
    since,
    until or since,
    bool(chosen("top")),
)
# Pages of results: the tokens of the pages seen so far, reset when the filters change.
if state.get("runs.filter") != flt:
    state["runs.filter"], state["runs.tokens"] = flt, [None]
tokens = state["runs.tokens"]
runs, next_token = data.search(uri(), flt, tokens[-1])
facets = data.facets(runs)


def pick(column: Any, label: str, key: str) -> str | None:
    picked = chosen(key)
    options = sorted(set(facets[key]) | ({picked} if picked else set()))
    return column.selectbox(label, options, index=None, placeholder="any", accept_new_options=True, key=f"runs.{key}")


# What stage= can select (conf/stage/), read from the config rather than the stage modules: the
# dashboard imports no stage.
STAGES_AND_FLOWS = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "stage").glob("*.yaml") if p.stem != "doctor")

with st.container(border=True):
    c = st.columns([2, 1.2, 1, 1.6])
    c[0].multiselect("Experiment", sorted(experiment_names.values()), placeholder="all", key="runs.experiment")
    c[1].selectbox(
        "Stage or flow",
        [*STAGES_AND_FLOWS, "sweep"],
        index=None,
        placeholder="any",
        key="runs.stage",
    )
    c[2].selectbox("Status", STATUSES, index=None, placeholder="any", key="runs.status")
    c[3].date_input("Started between", value=[], key="runs.dates")
    c = st.columns([1.4, 1.6, 0.7, 1, 1.8, 1.2])
    pick(c[0], "Persona", "persona")
    pick(c[1], "User persona", "user_persona")
    pick(c[2], "Turns", "turns")
    pick(c[3], "Models preset", "models")
    pick(c[4], "Assistant model", "assistant")
    c[5].toggle("Top-level only", key="runs.top", help="pipelines, loops, sweeps and stages run on their own")

if not runs:
    if len(experiment_names) and flt != data.RunFilter():
        st.info("No run matches these filters.", icon=":material/filter_alt_off:")
    else:
        empty(
            "No runs yet: the whole pipeline on the embedded model fills this page.",
            "make run      # or: python src/run.py",
        )
    st.stop()


def row(r: data.RunView) -> dict[str, Any]:
    m = r.metrics
    out: dict[str, Any] = {
        "started": r.started,
        "stage": r.step,
        "status": r.status,
        "experiment": r.experiment,
        "persona": r.choice("persona"),
        "user persona": r.choice("user_persona"),
        "turns": r.param("turns"),
        "models": r.choice("models"),
        "assistant": r.param("models.assistant"),
    }
    for key in sorted(k for k in m if k.startswith(names.JUDGE_PREFIX) and k.endswith((".mean", ".pass_rate"))):
        _, evaluator, stat = key.split(".")
        out[f"{evaluator} {'mean' if stat == 'mean' else 'pass'}"] = m[key]
    out |= {column: m.get(metric) for column, metric in COUNTS.items()}
    out["errors"] = sum(m[k] for k in ERRORS if k in m) if any(k in m for k in ERRORS) else None
    out["tokens"] = (m.get("tokens.input") or 0) + (m.get("tokens.output") or 0) if "tokens.input" in m else None
    out["cost $"] = m.get(names.COST_USD)
    out["wall s"] = m.get("wall_time_s")
    out["MLflow"] = settings().run_link(r.experiment_id, r.run_id)
    out["run id"] = r.run_id
    return out


table = pd.DataFrame([row(r) for r in runs])
first = len(tokens) - 1
st.caption(
    f"runs {first * data.PAGE_SIZE + 1}-{first * data.PAGE_SIZE + len(runs)}, newest first · select rows to open them"
)
event = st.dataframe(
    table,
    hide_index=True,
    width="stretch",
    height=min(36 * (len(table) + 1) + 3, 640),  # room for about 17 rows before the table scrolls
    on_select="rerun",
    selection_mode="multi-row",
    key=table_key("runs.table", [r.run_id for r in runs]),
    column_config={
        "started": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
        "MLflow": st.column_config.LinkColumn(display_text="open in MLflow"),
        "cost $": st.column_config.NumberColumn(format="%.4f"),
        "wall s": st.column_config.NumberColumn(format="%.1f"),
    },
)

c = st.columns([1, 1, 6])
if c[0].button("Newer", disabled=len(tokens) == 1, icon=":material/chevron_left:"):
    tokens.pop()
    st.rerun()
if c[1].button("Older", disabled=next_token is None, icon=":material/chevron_right:"):
    tokens.append(next_token)
    st.rerun()

selected = [runs[i].run_id for i in event.selection.rows]
if len(selected) == 1:
    remember("run", selected[0])
    picked = runs[event.selection.rows[0]]
    st.markdown(f"**Open** `{picked.run_id}` ({picked.step}):")
    links = st.columns(4)
    for column, (page, label) in zip(
        links,
        [
            ("conversations", "Conversations"),
            ("evaluations", "Evaluations"),
            ("compare", "Compare"),
            ("review", "Review"),
        ],
        strict=True,
    ):
        column.page_link(PAGES[page], label=label, query_params={"run": picked.run_id})
elif len(selected) > 1:
    st.page_link(
        PAGES["compare"],
        label=f"Compare these {len(selected)} runs",
        icon=":material/compare_arrows:",
        query_params={"runs": ",".join(selected)},
    )
