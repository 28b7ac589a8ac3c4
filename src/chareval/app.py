"""Runs the selected stage (or the pipeline) for a composed config: MLflow runs, inputs, outputs."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from chareval.config import AppConfig, validate_config
from chareval.errors import CharevalError, ConfigError, InputError
from chareval.io import file_sha256, write_text_atomic
from chareval.llm import DiskCache, LLMClient, UsageMeter
from chareval.llm.keys import load_env_file, require_keys
from chareval.schemas import Usage
from chareval.stages import LOOP_STAGES, STAGES, InputSpec
from chareval.stages.base import StageContext, StageResult
from chareval.tracking import (
    INPUT_SHA_TAG,
    SWEEP_RUN_ENV,
    SWEEP_TAG,
    StageRun,
    find_sweep_run,
    flatten_params,
    git_commit,
    output_sha_tag,
    redact,
    resolve_uri,
    resolved_yaml,
    start_run,
    use_store,
)

log = logging.getLogger(__name__)


class Job:
    """One invocation of src/run.py (one job of a multirun)."""

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
        self.parent_run_id = parent_run_id
        self.config_yaml = resolved_yaml(cfg)
        s = self.settings
        load_env_file(s.paths.root)
        stages = {"pipeline": s.pipeline.stages if s.pipeline else [], "finetune_loop": LOOP_STAGES}.get(stage, [stage])
        needs = {f"models.{role}": getattr(s.models, role) for name in stages for role in STAGES[name].roles}
        if any(STAGES[name].judges for name in stages):
            needs |= {f"judge {judge}": judge for judge in s.judges()}
        fine_tuning = {"finetune=together_qwen3_32b": "together/" + s.finetune.base_model}
        require_keys(s.models, needs | (fine_tuning if "finetune" in stages and s.finetune.backend == "together" else {}))
        cache = DiskCache(Path(s.paths.cache) / "llm") if s.cache else None
        self.client = LLMClient(s.models, cache, registry=s.paths.registry)
        for model in needs.values():
            self.client.provider(model)  # an unknown model, GGUF or fine-tuned name fails now, before any work
        self.tracking_uri = resolve_uri(s.tracking.uri, s.paths.root)
        if s.tracking.enabled:
            use_store(self.tracking_uri, s.tracking.experiment)
            if sweep_dir and not self.parent_run_id:  # a worker that did not inherit the environment
                self.parent_run_id = find_sweep_run(sweep_dir)
        # The config-group choices are params too, so the MLflow UI's compare view can plot by them.
        self.params = flatten_params(redact(s.model_dump(mode="json"))) | {f"choice.{k}": v for k, v in self.choices.items()}
        self.commit = git_commit(s.paths.root)
        self.summaries: list[str] = []
        self.metrics: dict[str, float] = {}  # every finished stage's metrics (a sweep's comparison reads them)
        self.top_run_id: str | None = None  # the first MLflow run this job made: its parent or its stage
        self._total, self._latency = Usage(), 0.0  # usage of the stages run so far

    @property
    def usage(self) -> Usage:
        return self._total

    @classmethod
    def from_hydra(cls, cfg: DictConfig) -> Job:
        hydra = HydraConfig.get()
        in_sweep = hydra.mode == RunMode.MULTIRUN
        return cls(
            cfg,
            stage=hydra.runtime.choices["stage"],
            run_dir=Path(hydra.runtime.output_dir),
            choices={k: v for k, v in hydra.runtime.choices.items() if not k.startswith("hydra/") and v is not None},
            parent_run_id=os.environ.get(SWEEP_RUN_ENV) if in_sweep else None,
            sweep_dir=hydra.sweep.dir if in_sweep else None,
        )

    # --- tags shared by every run of this job ---------------------------------------------
    def _tags(self, stage: str) -> dict[str, str]:
        tags = {f"choice.{k}": v for k, v in self.choices.items()}
        tags.update({"chareval.stage": stage, "chareval.run_dir": str(self.run_dir), "git.commit": self.commit})
        if self.parent_run_id:  # every run of a sweep job, nested or not, finds its sweep in one query
            tags[SWEEP_TAG] = self.parent_run_id
        return tags

    def run(self) -> dict[str, Path]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.run_dir / "config.yaml", self.config_yaml)
        if self.stage == "pipeline":
            with self._parent_run("pipeline"):
                outputs: dict[str, Path] = {}
                for stage in self.settings.pipeline.stages:
                    outputs.update(self._stage(stage, outputs))
                return outputs
        if self.stage == "finetune_loop":
            from chareval.stages.loop import run_loop

            with self._parent_run("finetune_loop") as parent:
                return run_loop(self, parent)
        return self._stage(self.stage, {}, parent_run_id=self.parent_run_id)

    @contextmanager
    def _parent_run(self, kind: str) -> Iterator[StageRun]:
        """A parent MLflow run whose children are the stages run inside it; it sums their usage."""
        started = time.perf_counter()
        self._total, self._latency = Usage(), 0.0
        with start_run(
            self.settings.tracking.enabled,
            run_name=f"{kind} {self.run_dir.name}",
            tags=self._tags(kind) | {"chareval.kind": kind},
            params=self.params,
            parent_run_id=self.parent_run_id,
        ) as parent:
            self.top_run_id = self.top_run_id or parent.run_id
            parent.log_artifact(self.run_dir / "config.yaml")
            try:
                yield parent
            finally:
                parent.log_metrics(usage_metrics(self._total, self._latency) | {"wall_time_s": time.perf_counter() - started})

    def _stage(
        self,
        stage: str,
        previous: dict[str, Path],
        parent_run_id: str | None = None,
        *,
        run_dir: Path | None = None,
        settings: AppConfig | None = None,
        client: LLMClient | None = None,
        label: str | None = None,
    ) -> dict[str, Path]:
        """Run one stage as its own MLflow run. The closed loop runs some stages twice, in their own
        folders and with other settings (another assistant model, other contexts)."""
        spec = STAGES[stage]
        run_dir, settings, client = run_dir or self.run_dir, settings or self.settings, client or self.client
        run_dir.mkdir(parents=True, exist_ok=True)
        client.meter = UsageMeter()  # usage is counted per stage
        started = time.perf_counter()
        with start_run(
            settings.tracking.enabled,
            run_name=f"{label or stage} {self.run_dir.name}",
            tags=self._tags(stage) | {"chareval.kind": "stage", "chareval.step": label or stage, "chareval.run_dir": str(run_dir)},
            params=self.params,
            parent_run_id=parent_run_id,
        ) as run:
            self.top_run_id = self.top_run_id or run.run_id
            run.log_artifact(self.run_dir / "config.yaml")
            inputs = {}
            needs = spec.needs
            if needs and not (needs.unless and getattr(self.settings, needs.unless)):
                inputs[needs.name] = previous.get(needs.name) or self._resolve_input(stage, needs)
                run.log_artifact(inputs[needs.name], artifact_path="inputs")
                if run.run_id:
                    run.set_tags({INPUT_SHA_TAG: file_sha256(inputs[needs.name])})
            result: StageResult | None = None
            try:
                result = spec.run(StageContext(settings, run_dir, client, run), inputs)
            finally:
                # Whatever was written (all of it, or what finished before a failure) is logged.
                self._log_outputs(run, stage, result, run_dir)
                meter = client.meter
                self._total, self._latency = self._total + meter.total(), self._latency + meter.latency_s
                metrics = usage_metrics(meter.total(), meter.latency_s) | {"wall_time_s": time.perf_counter() - started}
                run.log_metrics(metrics | (result.metrics if result else {}))
            self.summaries.append(result.summary)
            self.metrics.update(result.metrics)
            if result.failure:  # inside the run, so that MLflow marks it FAILED
                raise CharevalError(result.failure)
        log.info("%s done: %s", stage, result.summary)
        return result.outputs

    def _log_outputs(self, run: StageRun, stage: str, result: StageResult | None, run_dir: Path) -> None:
        """Each output as an artifact, and each output file's hash as a tag: a later stage tags the hash
        of its input, so runs link up by content (a file path, a run id or a pipeline alike)."""
        outputs = result.outputs if result else {Path(n).stem: run_dir / n for n in STAGES[stage].writes}
        for name, path in outputs.items():
            run.log_artifact(path)
            if run.run_id and path.is_file():
                run.set_tags({output_sha_tag(name): file_sha256(path)})

    def _resolve_input(self, stage: str, spec: InputSpec) -> Path:
        s = self.settings
        path, run_id = getattr(s, spec.file_key), getattr(s, spec.run_key)
        if path and run_id:
            raise ConfigError(f"both {spec.file_key} and {spec.run_key} are set", "give only one of them")
        if path:
            resolved = Path(path).expanduser().resolve()
            if not resolved.is_file():
                raise InputError(f"{spec.file_key}={path}: no such file", "check the path (relative to the current directory)")
            return resolved
        if run_id:
            return fetch_run_artifact(run_id, spec.artifact, self.run_dir / "inputs", s.tracking.enabled)
        raise ConfigError(
            f"stage={stage} needs its input: {spec.file_key}=<{spec.artifact}> or {spec.run_key}=<MLflow run id>",
            f"e.g. python src/run.py stage={stage} {spec.file_key}=outputs/runs/<date>/<time>_<stage>/{spec.artifact}",
        )


def usage_metrics(usage: Usage, latency_s: float) -> dict[str, float]:
    return {
        "model.calls": usage.calls,
        "model.cached_calls": usage.cached_calls,
        "model.retries": usage.retries,
        "model.fallbacks": usage.fallbacks,
        "tokens.input": usage.input_tokens,
        "tokens.output": usage.output_tokens,
        "tokens.thinking": usage.thinking_tokens,
        "cost_usd": usage.cost_usd,
        "model.latency_s": latency_s,
    }


def fetch_run_artifact(run_id: str, artifact: str, destination: Path, tracking_enabled: bool) -> Path:
    """Download `artifact` from an MLflow run of the configured store."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if not tracking_enabled:
        raise ConfigError("a *_run input needs MLflow", "set tracking.enabled=true or pass the file path instead")
    try:
        mlflow.get_run(run_id)
    except MlflowException:
        raise InputError(
            f"no MLflow run '{run_id}' in {mlflow.get_tracking_uri()}",
            "copy the run id from the MLflow UI (or pass the file path instead)",
        ) from None
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=str(destination)))
    except (MlflowException, OSError):
        names = [a.path for a in mlflow.MlflowClient().list_artifacts(run_id)]
        raise InputError(
            f"MLflow run {run_id} has no artifact '{artifact}' (it has: {', '.join(names) or 'none'})",
            "pick the run of the stage that writes it",
        ) from None
