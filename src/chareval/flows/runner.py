"""The public stage runner: one stage as its own MLflow run, its input resolved (the previous
stage's output, a file, or an MLflow run's artifact), its outputs and usage logged. Flows
(pipeline, finetune_loop) and single-stage jobs all run stages through it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from chareval.config import AppConfig
from chareval.errors import CharevalError, ConfigError, InputError
from chareval.llm import LLMClient, UsageMeter
from chareval.plugins import Registry
from chareval.schemas import Usage
from chareval.stages import STAGES, InputSpec
from chareval.stages.base import StageContext, StageResult
from chareval.store import names
from chareval.store.read import fetch_run_artifact
from chareval.store.runs import StageRun, start_run
from chareval.store.traces import Tracer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """One stage of a flow: which stage, under what label, in which folder, with which settings and
    model client (the closed loop runs some stages twice, on other contexts and another assistant).
    Unset fields are the job's own."""

    stage: str
    label: str | None = None
    run_dir: Path | None = None
    settings: AppConfig | None = None
    client: LLMClient | None = None


@dataclass
class RunLog:
    """What the job's stages have done so far: for the printed report and a sweep's comparison."""

    summaries: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0  # the models' answer time
    queue_s: float = 0.0  # the time calls waited for an in-flight slot
    truncated: int = 0  # replies cut off at max_tokens
    top_run_id: str | None = None  # the first MLflow run made: the job's parent run or its stage run
    exit_code: int = 0  # non-zero when a stage answered "no" (stage=gate: a regression), with the verdict
    verdict: str | None = None


class StageRunner:
    def __init__(
        self,
        settings: AppConfig,
        client: LLMClient,
        run_dir: Path,
        *,
        params: dict[str, str],
        tags: dict[str, str],
        config_file: Path,
        parent_run_id: str | None = None,
    ):
        self.settings = settings
        self.client = client
        self.run_dir = run_dir
        self.params = params
        self.tags = tags  # shared by every run of the job (choices, commit, the sweep)
        self.config_file = config_file
        self.parent_run_id = parent_run_id
        self.log = RunLog()

    def _tags(self, stage: str, **extra: str) -> dict[str, str]:
        tags = self.tags | {names.STAGE: stage, names.RUN_DIR: str(self.run_dir)} | extra
        if self.parent_run_id:  # every run of a sweep job, nested or not, finds its sweep in one query
            tags[names.SWEEP] = self.parent_run_id
        return tags

    @contextmanager
    def parent_run(self, kind: str) -> Iterator[StageRun]:
        """A parent MLflow run whose children are the stages run inside it; it sums their usage."""
        started = time.perf_counter()
        self.log.usage, self.log.latency_s, self.log.queue_s, self.log.truncated = Usage(), 0.0, 0.0, 0
        with start_run(
            self.settings.tracking.enabled,
            run_name=f"{kind} {self.run_dir.name}",
            tags=self._tags(kind, **{names.KIND: kind}),
            params=self.params,
            parent_run_id=self.parent_run_id,
        ) as parent:
            self.log.top_run_id = self.log.top_run_id or parent.run_id
            parent.log_artifact(self.config_file)
            try:
                yield parent
            finally:
                parent.log_metrics(
                    usage_metrics(self.log.usage, self.log.latency_s, self.log.queue_s, self.log.truncated)
                    | {"wall_time_s": time.perf_counter() - started}
                )

    def run(self, step: Step, previous: dict[str, Path], parent_run_id: str | None = None) -> dict[str, Path]:
        """Run one stage as its own MLflow run (nested under the active run, or under `parent_run_id`)."""
        spec = STAGES[step.stage]
        run_dir, settings, client = (
            step.run_dir or self.run_dir,
            step.settings or self.settings,
            step.client or self.client,
        )
        if spec.knobs and getattr(settings, spec.knobs[0]) is None:
            raise ConfigError(
                f"stage {step.stage} has no {spec.knobs[0]}.* settings",
                f"select it with stage={step.stage} "
                f"(conf/stage/{step.stage}.yaml), or list it in the flow's conf/stage/<flow>.yaml defaults",
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        client.meter = UsageMeter()  # usage is counted per stage
        started = time.perf_counter()
        label = step.label or step.stage
        tags = self._tags(step.stage, **{names.KIND: "stage", names.STEP: label, names.RUN_DIR: str(run_dir)})
        with start_run(
            settings.tracking.enabled,
            run_name=f"{label} {self.run_dir.name}",
            tags=tags,
            params=self.params,
            parent_run_id=parent_run_id,
        ) as run:
            self.log.top_run_id = self.log.top_run_id or run.run_id
            run.log_artifact(self.config_file)
            # The stage's model calls are traced under its run (the client is shared by stages).
            client.tracer = Tracer(run.run_id, self.run_dir / "run.log") if settings.tracking.traces else Tracer()
            inputs = {}
            needs = spec.needs
            if needs and not (needs.unless and getattr(settings, needs.unless)):
                inputs[needs.name] = previous.get(needs.name) or self.resolve_input(step.stage, needs, settings)
                run.log_input(inputs[needs.name], linked=True)
            for extra in spec.optional:
                if extra.name in previous or getattr(settings, extra.file_key) or getattr(settings, extra.run_key):
                    inputs[extra.name] = previous.get(extra.name) or self.resolve_input(step.stage, extra, settings)
                    run.log_input(inputs[extra.name], linked=False)
            result: StageResult | None = None
            try:
                result = spec.run(StageContext(settings, run_dir, client, run), inputs)
            finally:
                # Its traces are still being written by another process (the job waits for them
                # at its end); a later stage's feedback on them is written after them.
                client.tracer = Tracer()
                meter = client.meter
                self.log.usage += meter.total()
                self.log.latency_s += meter.latency_s
                self.log.queue_s += meter.queue_s
                self.log.truncated += meter.truncated
                metrics = (
                    usage_metrics(meter.total(), meter.latency_s, meter.queue_s, meter.truncated)
                    | role_metrics(meter.roles())
                    | {"wall_time_s": time.perf_counter() - started}
                )
                # Whatever was written (all of it, or what finished before a failure) is logged.
                outputs = result.outputs if result else {Path(n).stem: run_dir / n for n in spec.writes}
                run.log_outputs(outputs, metrics | (result.metrics if result else {}))
            assert result is not None
            self.log.summaries.append(result.summary)
            self.log.metrics.update(result.metrics)
            if result.exit_code:
                self.log.exit_code, self.log.verdict = result.exit_code, result.verdict
            if result.failure:  # inside the run, so that MLflow marks it FAILED
                raise CharevalError(result.failure)
        return result.outputs

    def resolve_input(self, stage: str, spec: InputSpec, settings: AppConfig) -> Path:
        """The input of a stage run on its own: a file path, or an artifact of an MLflow run."""
        path, run_id = getattr(settings, spec.file_key), getattr(settings, spec.run_key)
        if path and run_id:
            raise ConfigError(f"both {spec.file_key} and {spec.run_key} are set", "give only one of them")
        if path:
            resolved = Path(path).expanduser().resolve()
            if resolved.is_dir():
                raise InputError(f"{spec.file_key}={path} is a folder", f"pass the {spec.artifact} inside it")
            if not resolved.is_file():
                raise InputError(
                    f"{spec.file_key}={path}: no such file", "check the path (relative to the current directory)"
                )
            return resolved
        if run_id:
            return fetch_run_artifact(run_id, spec.artifact, self.run_dir / "inputs", settings.tracking.enabled)
        raise ConfigError(
            f"stage={stage} needs its input: {spec.file_key}=<{spec.artifact}> or {spec.run_key}=<MLflow run id>",
            f"e.g. python src/run.py stage={stage} {spec.file_key}=outputs/runs/<date>/<time>_<stage>/{spec.artifact}",
        )


def role_metrics(roles: dict[str, Usage]) -> dict[str, float]:
    """Calls (answered and from the cache), tokens and cost per role or purpose: what the breach check
    and the adaptive attacker add shows apart from the assistant's and the user's own turns."""
    metrics: dict[str, float] = {}
    for role, usage in roles.items():
        metrics |= {
            names.usage_metric(role, "calls"): usage.calls + usage.cached_calls,
            names.usage_metric(role, "tokens"): usage.input_tokens + usage.output_tokens + usage.thinking_tokens,
            names.usage_metric(role, "cost_usd"): usage.cost_usd,
        }
    return metrics


def usage_metrics(usage: Usage, latency_s: float, queue_s: float, truncated: int) -> dict[str, float]:
    return {
        "model.truncated": truncated,
        "model.calls": usage.calls,
        "model.cached_calls": usage.cached_calls,
        "model.retries": usage.retries,
        "model.fallbacks": usage.fallbacks,
        "tokens.input": usage.input_tokens,
        "tokens.output": usage.output_tokens,
        "tokens.thinking": usage.thinking_tokens,
        names.COST_USD: usage.cost_usd,
        "model.latency_s": latency_s,  # the models' answer time, summed over calls
        "model.queue_s": queue_s,  # the time calls waited for an in-flight slot (not the models' time)
    }


@dataclass(frozen=True)
class Flow:
    stages: Callable[[AppConfig], list[str]]  # the stages it runs, for the up-front checks
    run: Callable[[StageRunner, StageRun], dict[str, Path]]  # with the flow's parent run
    # What it needs beyond its stages' roles (raising ConfigError on what is wrong), checked before any
    # work: label -> model, e.g. the closed loop's teacher and student.
    models: Callable[[AppConfig], dict[str, str]] = lambda settings: {}


# Every flow module (chareval/flows/<name>.py) registers its Flow here; stage=<name> runs it.
FLOWS: Registry[Flow] = Registry(
    "flow", "chareval.flows", helpers=("runner",), fix="a flow is a conf/stage/<name>.yaml and its module here"
)
