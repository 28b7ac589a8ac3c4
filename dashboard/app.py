"""chareval's dashboard: `make dashboard`, or `streamlit run dashboard/app.py [-- overrides]`.

It reads what the runs wrote (the MLflow store and the runs' artifacts, the registry of fine-tuned
models) and writes one thing: the labels of the Review page."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `dashboard` as a package, as in tests

from mlflow.exceptions import MlflowException

from chareval.errors import CharevalError
from chareval.store.runs import STORE_MODULES, check_readable
from dashboard import data, settings
from dashboard.components import PAGES, escape

# A tracking server that is down should say so in seconds, not after MLflow's minutes of retries;
# artifact downloads need no progress bars in the server's log.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

st.set_page_config(page_title="chareval", page_icon=":material/theater_comedy:", layout="wide")


@st.cache_resource(show_spinner=False)
def load_settings(args: tuple[str, ...], environment_uri: str | None) -> settings.Settings:
    return settings.load(list(args))  # environment_uri: part of the key, as MLFLOW_TRACKING_URI beats the config


try:
    args = tuple(settings.overrides(sys.argv, __file__))
    st.session_state["settings"] = current = load_settings(args, os.environ.get("MLFLOW_TRACKING_URI"))
except CharevalError as e:
    st.error(escape(str(e)))
    st.stop()

pages = st.navigation(
    [
        st.Page(PAGES["runs"], title="Runs", icon=":material/table_rows:", default=True),
        st.Page(PAGES["conversations"], title="Conversations", icon=":material/forum:"),
        st.Page(PAGES["evaluations"], title="Evaluations", icon=":material/gavel:"),
        st.Page(PAGES["compare"], title="Compare", icon=":material/compare_arrows:"),
        st.Page(PAGES["models"], title="Fine-tuned models", icon=":material/model_training:"),
        st.Page(PAGES["review"], title="Review", icon=":material/rate_review:"),
    ]
)

with st.sidebar:
    st.caption("MLflow store")
    st.code(current.tracking_uri, language=None, wrap_lines=True)
    if st.button("Refresh", icon=":material/refresh:", help="read the store again (new runs, new artifacts)"):
        data.clear_caches()
        st.rerun()

if current.store_missing():
    st.info("No MLflow store yet: nothing has run on this machine.", icon=":material/info:")
    st.code("make run      # the whole pipeline on the embedded model, then reopen this page", language="bash")
    st.stop()

try:
    check_readable(current.tracking_uri)
    pages.run()
except CharevalError as e:
    st.error(escape(str(e)), icon=":material/error:")
except MlflowException as e:
    st.error(escape(f"Cannot read the MLflow store {current.tracking_uri}: {e.message}"), icon=":material/error:")
    st.caption("check tracking.uri / MLFLOW_TRACKING_URI (is the tracking server up?)")
except Exception as e:  # the store's database or HTTP client failing under MLflow: a banner, not a traceback
    if type(e).__module__.split(".")[0] not in STORE_MODULES:
        raise
    st.error(escape(f"Cannot read the MLflow store {current.tracking_uri}: {type(e).__name__}: {e}"[:1000]))
    st.caption("check tracking.uri / MLFLOW_TRACKING_URI, or move a damaged store file aside")
