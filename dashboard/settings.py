"""Where the dashboard reads from: the project's own config (conf/), composed with Hydra, so that the
same overrides as `src/run.py` point it elsewhere:

    streamlit run dashboard/app.py -- tracking.uri=http://mlflow.internal:5000 paths.outputs=/data/outputs

CHAREVAL_DASHBOARD_ARGS (space-separated overrides) does the same where no command line is at hand.
MLFLOW_TRACKING_URI beats tracking.uri, as for every run."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from chareval.errors import ConfigError
from chareval.store.runs import resolve_uri

ARGS_ENV = "CHAREVAL_DASHBOARD_ARGS"
MLFLOW_UI_ENV = "CHAREVAL_MLFLOW_UI"  # where the MLflow UI is served, for links to runs
DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"  # what `make mlflow-ui` serves


@dataclass(frozen=True)
class Settings:
    tracking_uri: str
    registry: Path  # the registry of fine-tuned models (JSONL)
    labels: Path  # the default labels file of the Review page
    mlflow_ui: str

    def store_missing(self) -> bool:
        """A local store that no run has created yet (the dashboard never creates one)."""
        return (
            self.tracking_uri.startswith("sqlite:///")
            and not Path(self.tracking_uri.removeprefix("sqlite:///")).is_file()
        )

    def run_link(self, experiment_id: str, run_id: str) -> str:
        return f"{self.mlflow_ui}/#/experiments/{experiment_id}/runs/{run_id}"


def overrides(argv: list[str], script: str) -> list[str]:
    """CHAREVAL_DASHBOARD_ARGS, then the overrides after `--` of `streamlit run dashboard/app.py -- ...`
    (sys.argv then starts with the app's path; any other argv, pytest's, is not ours). Later ones win."""
    ours = argv[1:] if argv and Path(argv[0]).resolve() == Path(script).resolve() else []
    return shlex.split(os.environ.get(ARGS_ENV, "")) + ours


def load(args: list[str]) -> Settings:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from chareval.config.compose import compose

    try:
        cfg = compose(args)
        paths = OmegaConf.to_container(cfg.paths, resolve=True)
        tracking = OmegaConf.to_container(cfg.tracking, resolve=True)
    except (ConfigError, OmegaConfBaseException) as e:
        raise ConfigError(
            f"the dashboard's overrides {' '.join(args)!r} do not compose: {getattr(e, 'message', e)}",
            "use the same overrides as src/run.py, e.g. tracking.uri=... paths.outputs=...",
        ) from None
    assert isinstance(paths, dict) and isinstance(tracking, dict)
    uri = resolve_uri(tracking.get("uri"), paths["root"])
    ui = os.environ.get(MLFLOW_UI_ENV) or (uri if uri.startswith(("http://", "https://")) else DEFAULT_MLFLOW_UI)
    return Settings(
        tracking_uri=uri,
        registry=Path(paths["registry"]),
        labels=Path(paths["outputs"]) / "labels" / "judge_labels.jsonl",
        mlflow_ui=ui.rstrip("/"),
    )
