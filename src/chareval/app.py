"""One invocation of src/run.py (one job of a multirun): the config validated, keys and models checked
before any work, the MLflow store chosen, then the stage or flow run through the stage runner."""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from chareval import flows
from chareval.config import AppConfig
from chareval.fingerprint import check_or_record
from chareval.flows.runner import RunLog, StageRunner
from chareval.io import hold_run_dir, write_text_atomic
from chareval.llm import DiskCache, LLMClient
from chareval.llm.registry import require_keys
from chareval.remote.keys import load_env_file
from chareval.stages import STAGES
from chareval.stages.attacker import models_needed as attack_models
from chareval.stages.backends import BACKENDS
from chareval.store import names
from chareval.store.runs import (
    SWEEP_RUN_ENV,
    close_abandoned_runs,
    find_sweep_run,
    flatten_params,
    git_commit,
    redact,
    resolve_uri,
    resolved_yaml,
    use_store,
)
from chareval.validation import validate_config


class Job:
    def __init__(
        self,
        cfg: DictConfig,
        *,
        stage: str,
        run_dir: Path,
        choices: dict[str, str] | None = None,
        parent_run_id: str | None = None,
        sweep_dir: str | None = None,
    ):
        self.settings: AppConfig = validate_config(cfg)
        self.stage = stage
        self.run_dir = Path(run_dir)
        self.choices = choices or {}
        s = self.settings
        load_env_file(s.paths.root)
        self.client = LLMClient(
            s.models, DiskCache(Path(s.paths.cache) / "llm") if s.cache else None, registry=s.paths.registry
        )
        self._check_before_any_work()
        self.tracking_uri = resolve_uri(s.tracking.uri, s.paths.root)
        self.experiment_id = None
        if s.tracking.enabled:
            self.experiment_id = use_store(self.tracking_uri, s.tracking.experiment)
            if sweep_dir and not parent_run_id:  # a worker that did not inherit the environment
                parent_run_id = find_sweep_run(sweep_dir)
        # The config-group choices are params too, so the MLflow UI's compare view can plot by them.
        params = flatten_params(redact(s.model_dump(mode="json"))) | {
            names.choice(k): v for k, v in self.choices.items()
        }
        tags = {names.choice(k): v for k, v in self.choices.items()} | {names.GIT_COMMIT: git_commit(s.paths.root)}
        self.runner = StageRunner(
            s,
            self.client,
            self.run_dir,
            params=params,
            tags=tags,
            config_file=self.run_dir / "config.yaml",
            parent_run_id=parent_run_id,
        )
        self.config_yaml = resolved_yaml(cfg)

    @classmethod
    def from_hydra(cls, cfg: DictConfig) -> Job:
        hydra = HydraConfig.get()
        in_sweep = hydra.mode == RunMode.MULTIRUN
        return cls(
            cfg,
            stage=hydra.runtime.choices["stage"],
            run_dir=Path(hydra.runtime.output_dir),
            # The groups a user picks (provider@… and hydra/… entries are structure, not choices).
            choices={k: v for k, v in hydra.runtime.choices.items() if "/" not in k and "@" not in k and v is not None},
            parent_run_id=os.environ.get(SWEEP_RUN_ENV) if in_sweep else None,
            sweep_dir=hydra.sweep.dir if in_sweep else None,
        )

    def _check_before_any_work(self) -> None:
        """Every key and model the job's stages need: a missing key, an unknown model, GGUF or
        fine-tuned name stops it now, not in the middle of a stage."""
        s = self.settings
        stages = flows.stages_of(self.stage, s)
        needs = {f"models.{role}": getattr(s.models, role) for name in stages for role in STAGES[name].roles}
        if any(STAGES[name].judges for name in stages):
            needs |= {f"judge {judge}": judge for judge in s.judges()}
        if any(STAGES[name].teacher for name in stages):
            needs["models.teacher"] = s.models.teacher_model()
        needs |= flows.models_of(self.stage, s)
        needs |= attack_models(s, stages)
        require_keys(s.models, needs)
        endpoint = BACKENDS.get(s.finetune.backend).endpoint
        if "finetune" in stages and endpoint:
            endpoint.require_key(f"finetune={s.finetune.backend}")
        for model in needs.values():
            self.client.provider(model)

    @property
    def log(self) -> RunLog:
        """What the stages did: summaries, metrics, usage, the first MLflow run."""
        return self.runner.log

    def run(self) -> dict[str, Path]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with hold_run_dir(self.run_dir):
            check_or_record(self.run_dir, self.settings)
            if self.experiment_id is not None:
                closed = close_abandoned_runs(self.run_dir, self.experiment_id)
                if closed:  # the resumed job's runs say which runs they take over from
                    self.runner.tags[names.RESUMES] = ",".join(closed)
            write_text_atomic(self.run_dir / "config.yaml", self.config_yaml)
            return flows.run(self.stage, self.runner)
