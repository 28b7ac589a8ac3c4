"""What every stage gets and returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from chareval.config import AppConfig
from chareval.errors import ConfigError, InputError
from chareval.io import latest_by_id, read_records_json, read_records_jsonl
from chareval.llm import LLMClient
from chareval.plugins import Registry
from chareval.schemas import Context, Conversation
from chareval.store.runs import StageRun
from chareval.store.traces import Tracer


@dataclass
class StageContext:
    settings: AppConfig
    run_dir: Path  # the folder the stage writes its files in
    client: LLMClient
    mlflow: StageRun  # the stage's MLflow run (a no-op when tracking is off)

    @property
    def tracer(self) -> Tracer:
        """The stage run's traces (off unless tracking.traces), shared with its model client."""
        return self.client.tracer

    def knobs(self, key: str, kind: type[K]) -> K:
        """The stage's own settings (e.g. `contexts.*`), present only when the stage is selected."""
        value = getattr(self.settings, key)
        if not isinstance(value, kind):
            raise ConfigError(
                f"no {key}.* settings", f"select the stage with stage={key}, or list it in the flow's defaults"
            )
        return value


K = TypeVar("K", bound=BaseModel)


def progress(ctx: StageContext, errors: int) -> dict[str, object]:
    """What a progress bar shows beside done/total."""
    total = ctx.client.meter.total()
    return {"errors": errors, "tokens": total.input_tokens + total.output_tokens, "cost": f"${total.cost_usd:.4f}"}


@dataclass
class StageResult:
    # name -> file; logged as artifacts and handed to the next stage of a pipeline.
    outputs: dict[str, Path]
    metrics: dict[str, float] = field(default_factory=dict)
    summary: str = ""
    # Set when the stage wrote everything but must still fail (e.g. the judges' error budget).
    failure: str | None = None
    # A stage that finished but whose answer is "no": the command's exit status and why (stage=gate
    # exits 1 on a regression; its MLflow run is FINISHED, the measurement itself succeeded).
    exit_code: int = 0
    verdict: str | None = None


def read_conversations(path: Path) -> list[Conversation]:
    """A conversations.jsonl as its latest record per id (a retried conversation supersedes its
    error), in id order (the file is in completion order, which concurrency changes). Two finished
    records with one id are not a retry but a collision (files of two runs concatenated): an error."""
    records = read_records_jsonl(path, Conversation)
    finished: dict[str, int] = {}
    for number, record in enumerate(records, start=1):
        if record.error is None:
            if record.id in finished:
                raise InputError(
                    f"{path}: records {finished[record.id]} and {number} are both finished conversations with "
                    f"the id {record.id}; ids must be unique (were the files of two runs put together?)",
                    "judge or prepare each run's conversations.jsonl on its own (or give one run's ids another prefix)",
                )
            finished[record.id] = number
    return sorted(latest_by_id(records), key=lambda c: c.id)


def read_contexts(path: Path) -> list[Context]:
    """A contexts.json. Two contexts with one id would give two conversations that cite the same
    context id for different scenarios: refused like duplicate conversation ids, naming both."""
    contexts = read_records_json(path, Context)
    seen: dict[str, int] = {}
    for number, context in enumerate(contexts, start=1):
        if context.id in seen:
            raise InputError(
                f"{path}: contexts {seen[context.id]} and {number} both have the id {context.id}; ids must be unique"
                " (were two contexts files put together?)",
                "give each context its own id (ctx-001, ctx-002, …) or use one run's contexts.json as it was written",
            )
        seen[context.id] = number
    return contexts


def error_budget(what: str, errors: list[str], total: int, key: str, limit: float, run_dir: Path) -> str | None:
    """The failure of a stage whose share of error records is above its budget (None within it),
    with the first error's reason and fix. Everything is written first: each record says why."""
    fraction = len(errors) / total if total else 0.0
    if fraction <= limit:
        return None
    return (
        f"{len(errors)} of {total} {what} are errors ({fraction:.0%} > {key}={limit}); "
        f"everything is written to {run_dir}. The first: {errors[0]}"
    )


@dataclass(frozen=True)
class InputSpec:
    name: str  # the key in the previous stage's outputs
    file_key: str  # config key of a file path
    run_key: str  # config key of an MLflow run id whose artifact is used
    artifact: str  # that artifact's file name
    unless: str | None = None  # a config key that, when set, makes the input unnecessary


@dataclass(frozen=True)
class Stage:
    run: Callable[[StageContext, dict[str, Path]], StageResult]
    needs: InputSpec | None = None
    # Files it writes in the run folder: logged even when the stage fails part-way.
    writes: tuple[str, ...] = ()
    # Model roles it calls: their API keys are checked before any work starts.
    roles: tuple[str, ...] = ()
    judges: bool = False  # it calls the judge models (judge_model= / evaluation.judges)
    teacher: bool = False  # it calls models.teacher (default: the assistant)
    # Its knobs: the AppConfig key (conf/stage/<stage>.yaml puts them there) and their class.
    knobs: tuple[str, type[BaseModel]] | None = None
    # Inputs it reads when given (a file, a run, or an earlier stage of the flow), e.g. prepare's verdicts.
    optional: tuple[InputSpec, ...] = ()


# Every module of chareval/stages that runs a stage registers its Stage here (at its end).
STAGES: Registry[Stage] = Registry(
    "stage",
    "chareval.stages",
    fix="stage= takes a conf/stage/<name>.yaml; a new stage is a module that registers itself",
)
