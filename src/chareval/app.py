"""One invocation of src/run.py (one job of a multirun): the config validated, keys and models checked
before any work, the MLflow store chosen, then the stage or flow run through the stage runner."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from chareval import flows
from chareval.config import AppConfig
from chareval.errors import ConfigError
from chareval.fingerprint import check_or_record
from chareval.flows.runner import RunLog, StageRunner
from chareval.io import hold_run_dir, write_text_atomic
from chareval.llm import DiskCache, LLMClient
from chareval.llm.budget import Spending, ledger_for
from chareval.llm.plan import Planner
from chareval.llm.registry import require_keys
from chareval.remote.keys import load_env_file
from chareval.stages import STAGES
from chareval.stages.attacker import models_needed as attack_models
from chareval.stages.backends import BACKENDS
from chareval.store import names
from chareval.store.runs import (
    INVOCATION_ENV,
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
        # dry_run: the stages run on stand-in answers, in a scratch folder, with no MLflow run.
        self.planner = Planner(s.models, s.plan) if s.dry_run else None
        if s.dry_run:
            s.tracking = s.tracking.model_copy(update={"enabled": False})
        resume = (
            f"rerun the same sweep with hydra.sweep.dir={sweep_dir}"
            if sweep_dir
            else f"rerun the same command with hydra.run.dir={self.run_dir}"
        )
        ledger = ledger_for(sweep_dir, os.environ.get(INVOCATION_ENV), self.run_dir.name)
        self.client = LLMClient(
            s.models,
            DiskCache(Path(s.paths.cache) / "llm") if s.cache else None,
            registry=s.paths.registry,
            planner=self.planner,
            spending=Spending(s.budget, s.models, s.plan, resume=resume, cached=s.cache, ledger=ledger)
            if s.budget.limited
            else None,
        )
        self.missing_keys: str | None = None  # a dry run's: what a real run would stop on
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
        self.plan: dict[str, Any] | None = None  # what a dry run found

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
        try:
            require_keys(s.models, needs)
            endpoint = BACKENDS.get(s.finetune.backend).endpoint
            if "finetune" in stages and endpoint:
                endpoint.require_key(f"finetune={s.finetune.backend}")
        except ConfigError as e:
            if not s.dry_run:  # a plan needs no key: it says what the real run will need
                raise
            self.missing_keys = e.message
        for model in needs.values():
            self.client.provider(model)

    @property
    def log(self) -> RunLog:
        """What the stages did: summaries, metrics, usage, the first MLflow run."""
        return self.runner.log

    def run(self) -> dict[str, Path]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.planner is not None:
            return self._plan()
        with hold_run_dir(self.run_dir):
            check_or_record(self.run_dir, self.settings)
            if self.experiment_id is not None:
                closed = close_abandoned_runs(self.run_dir, self.experiment_id)
                if closed:  # the resumed job's runs say which runs they take over from
                    self.runner.tags[names.RESUMES] = ",".join(closed)
            write_text_atomic(self.run_dir / "config.yaml", self.config_yaml)
            # Its traces are written by another process, which nothing here waits for: a resume of
            # this folder, or any later command on the store, waits for them (writer_registry).
            return flows.run(self.stage, self.runner)

    def _plan(self) -> dict[str, Path]:
        """dry_run=true: the stages on stand-in answers in a scratch folder (deleted after), and
        plan.json in the run folder."""
        assert self.planner is not None
        write_text_atomic(self.run_dir / "config.yaml", self.config_yaml)
        with tempfile.TemporaryDirectory(prefix="chareval-dry-run-") as scratch:
            self.runner.run_dir = Path(scratch)
            flows.run(self.stage, self.runner)
        self.runner.run_dir = self.run_dir
        plan = self.planner.totals() | {
            "stage": self.stage,
            "missing_keys": self.missing_keys,
            "budget": self.settings.budget.model_dump(),
        }
        path = self.run_dir / names.PLAN
        write_text_atomic(path, json.dumps(plan, indent=2) + "\n")
        self.plan = plan
        return {"plan": path}
