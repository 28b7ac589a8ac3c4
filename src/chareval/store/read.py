"""The typed reads of the MLflow store: runs and their lineage, the records a run logged, verdicts,
fine-tuned models and labels. The dashboard wraps these in its Streamlit cache; a stage's *_run
inputs fetch through fetch_run_artifact. Reads go through MLflow (runs, metrics and artifacts, so a
shared tracking server works as well as the local SQLite store). Nothing here writes.

Runs are searched page by page with the filters pushed down to MLflow: loading every run of a big
store costs seconds (MLflow builds an object per param), a page of 100 does not."""

from __future__ import annotations

import functools
import json
import logging
import tempfile
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from chareval.errors import ConfigError, InputError
from chareval.io import file_sha256, latest_by_id, read_records_json, read_records_jsonl
from chareval.schemas import Context, Conversation, Evaluation, FineTunedModel, JudgeCase, Repair
from chareval.store import names
from chareval.tuned.catalog import Catalog

log = logging.getLogger(__name__)

PAGE_SIZE = 100  # runs per page of the Runs table
RECENT = 100  # newest top-level runs offered by the run pickers (any run opens from the Runs page)
FIND_LIMIT = 1000  # lineage and children queries (a sweep of more jobs shows its newest 1000)
FLOWS = ("pipeline", "finetune_loop", "sweep")  # runs whose children hold the stage results
MAKES_CONVERSATIONS = ("conversations", "branch")  # stages whose conversations.jsonl is a set to read


def client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


# --- runs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunView:
    """What the pages need of one MLflow run."""

    run_id: str
    name: str
    experiment_id: str
    experiment: str
    status: str
    start_ms: int
    end_ms: int | None
    tags: dict[str, str] = field(hash=False)
    params: dict[str, str] = field(hash=False)
    metrics: dict[str, float] = field(hash=False)

    @property
    def stage(self) -> str:
        """A stage's name, or the kind of a parent run: pipeline, finetune_loop, sweep."""
        return self.tags.get(names.STAGE) or self.tags.get(names.KIND, "?")

    @property
    def step(self) -> str:
        return self.tags.get(names.STEP) or self.stage

    @property
    def parent(self) -> str | None:
        return self.tags.get(names.PARENT)

    @property
    def started(self) -> datetime:
        return datetime.fromtimestamp(self.start_ms / 1000)

    def choice(self, group: str) -> str | None:
        return self.tags.get(names.choice(group))

    def param(self, key: str) -> str | None:
        value = self.params.get(key)
        return None if value in (None, "null") else value

    def judges(self) -> list[str]:
        """As AppConfig.judges(): judge_model=, else evaluation.judges, else models.judge."""
        single = self.param("judge_model")
        if single:
            return [single]
        listed = self.param("evaluation.judges")
        return listed.split(",") if listed else [j for j in [self.param("models.judge")] if j]

    def evaluators(self) -> list[str]:
        listed = self.param("evaluation.evaluators")
        return listed.split(",") if listed else []

    def describe(self) -> str:
        """One line for pickers: our own fields only (no model output)."""
        who = " vs ".join(p for p in (self.choice("persona"), self.choice("user_persona")) if p)
        turns = f", turns={self.param('turns')}" if self.param("turns") else ""
        return f"{self.started:%Y-%m-%d %H:%M} · {self.step} · {who}{turns} · {self.status.lower()} · {self.run_id[:8]}"


def _view(run: Any, experiments: dict[str, str]) -> RunView:
    info, data = run.info, run.data
    return RunView(
        run_id=info.run_id,
        name=info.run_name or info.run_id[:8],
        experiment_id=info.experiment_id,
        experiment=experiments.get(info.experiment_id, info.experiment_id),
        status=info.status,
        start_ms=info.start_time or 0,
        end_ms=info.end_time,
        tags=dict(data.tags),
        params=dict(data.params),
        metrics=dict(data.metrics),
    )


def experiments(uri: str) -> dict[str, str]:
    """Experiment id -> name (active experiments)."""
    return {e.experiment_id: e.name for e in client(uri).search_experiments()}


def quote(value: str) -> str:
    if "'" in value:
        raise InputError(f"a filter value cannot contain a quote: {value!r}")
    return f"'{value}'"


@dataclass(frozen=True)
class RunFilter:
    """The Runs page's filters, as an MLflow search filter (MLflow ANDs clauses; IN works for ids only)."""

    experiment_ids: tuple[str, ...] = ()
    stage: str | None = None
    status: str | None = None
    persona: str | None = None
    user_persona: str | None = None
    turns: str | None = None
    models: str | None = None
    assistant: str | None = None
    since: date | None = None
    until: date | None = None
    top_level: bool = False

    def expression(self) -> str:
        clauses = []
        if self.stage == "sweep":
            clauses.append(f"tags.`{names.KIND}` = 'sweep'")
        elif self.stage:
            clauses.append(f"tags.`{names.STAGE}` = {quote(self.stage)}")
        if self.status:
            clauses.append(f"attributes.status = {quote(self.status)}")
        for tag, value in (
            (names.choice("persona"), self.persona),
            (names.choice("user_persona"), self.user_persona),
            (names.choice("models"), self.models),
        ):
            if value:
                clauses.append(f"tags.`{tag}` = {quote(value)}")
        if self.turns:
            clauses.append(f"params.turns = {quote(self.turns)}")
        if self.assistant:
            clauses.append(f"params.`models.assistant` = {quote(self.assistant)}")
        if self.since:
            clauses.append(f"attributes.start_time >= {_ms(self.since)}")
        if self.until:
            clauses.append(f"attributes.start_time < {_ms(self.until + timedelta(days=1))}")
        if self.top_level:
            clauses.append(f"tags.`{names.PARENT}` IS NULL")
        return " AND ".join(clauses)


def _ms(day: date) -> int:
    return int(datetime.combine(day, time()).timestamp() * 1000)


def search(uri: str, flt: RunFilter, page_token: str | None = None) -> tuple[list[RunView], str | None]:
    """One page of runs matching the filter, newest first, and the token of the next page."""
    known = experiments(uri)
    ids = list(flt.experiment_ids) or list(known)
    if not ids:
        return [], None
    page = client(uri).search_runs(
        ids, flt.expression(), max_results=PAGE_SIZE, order_by=["attributes.start_time DESC"], page_token=page_token
    )
    return [_view(r, known) for r in page], page.token


def find(uri: str, expression: str, limit: int = FIND_LIMIT) -> list[RunView]:
    """Runs of every experiment matching an MLflow filter expression, newest first."""
    known = experiments(uri)
    if not known:
        return []
    runs = client(uri).search_runs(list(known), expression, max_results=limit, order_by=["attributes.start_time DESC"])
    return [_view(r, known) for r in runs]


def recent(uri: str) -> list[RunView]:
    """The newest top-level runs: pipelines, loops, sweeps and stages run on their own."""
    return find(uri, f"tags.`{names.PARENT}` IS NULL", RECENT)


def facets(runs: list[RunView]) -> dict[str, list[str]]:
    """The values these runs have, offered by the Runs page's filters (any other value can be typed)."""
    values = {
        "persona": {r.choice("persona") for r in runs},
        "user_persona": {r.choice("user_persona") for r in runs},
        "models": {r.choice("models") for r in runs},
        "assistant": {r.param("models.assistant") for r in runs},
        "turns": {r.param("turns") for r in runs},
    }
    return {
        k: sorted((v for v in vs if v), key=lambda x: (len(x), x) if k == "turns" else x) for k, vs in values.items()
    }


def run(uri: str, run_id: str) -> RunView | None:
    try:
        found = client(uri).get_run(run_id)
    except MlflowException:
        return None
    return _view(found, experiments(uri))


def children(uri: str, run_id: str) -> list[RunView]:
    return find(uri, f"tags.`{names.PARENT}` = {quote(run_id)}")


def descendants(uri: str, parent: RunView) -> list[RunView]:
    """The stage runs under a flow: a pipeline's or a loop's children; every run of a sweep's jobs."""
    if parent.stage == "sweep":
        return find(uri, f"tags.`{names.SWEEP}` = {quote(parent.run_id)}")
    return children(uri, parent.run_id)


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client(uri).get_metric_history(run_id, key)]


# --- artifacts -------------------------------------------------------------------------------


@functools.cache
def _download_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="chareval-dashboard-"))


def artifact_file(uri: str, run_id: str, path: str) -> Path | None:
    """A local copy of one artifact of a run, or None when the run has no such artifact."""
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path, dst_path=str(_download_dir() / run_id), tracking_uri=uri
        )
    except (MlflowException, OSError):
        return None
    return Path(local) if Path(local).is_file() else None


def input_artifact(uri: str, run_id: str) -> str | None:
    """The file a stage read, logged under inputs/ with its own name (e.g. inputs/contexts.json)."""
    try:
        files = [a.path for a in client(uri).list_artifacts(run_id, "inputs") if not a.is_dir]
    except (MlflowException, OSError):
        return None
    return files[0] if files else None


def _records(uri: str, run_id: str, path: str | None, model: type, jsonl: bool = True) -> list:
    if path is None:
        return []
    local = artifact_file(uri, run_id, path)
    if local is None:
        return []
    try:
        return latest_by_id(read_records_jsonl(local, model)) if jsonl else read_records_json(local, model)
    except InputError as e:  # name the artifact, not the temporary copy
        raise InputError(
            e.message.replace(str(local), f"{path} of run {run_id}"), "the run's file is not a valid record file"
        ) from None


def conversations(uri: str, run_id: str, path: str) -> list[Conversation]:
    return _records(uri, run_id, path, Conversation)


def judge_cases(uri: str, run_id: str, path: str) -> list[JudgeCase]:
    return _records(uri, run_id, path, JudgeCase)


def evaluations(uri: str, run_id: str) -> list[Evaluation]:
    return _records(uri, run_id, names.EVALUATIONS, Evaluation)


def contexts(uri: str, run_id: str) -> list[Context]:
    """The contexts a conversations run read."""
    return _records(uri, run_id, input_artifact(uri, run_id), Context, jsonl=False)


def json_artifact(uri: str, run_id: str, path: str) -> dict | None:
    local = artifact_file(uri, run_id, path)
    return json.loads(local.read_text(encoding="utf-8")) if local else None


# --- lineage: which runs hold a run's conversations, contexts and judgments ------------------


@dataclass(frozen=True)
class ConversationSet:
    """Conversations as one run logged them, with the runs that judged them."""

    label: str
    source_run: str  # the run whose artifact `path` holds them
    path: str
    judged_by: tuple[str, ...]  # evaluate / judge_check runs, newest first
    contexts_run: str | None  # the conversations run (the contexts file it read, under inputs/)
    job: RunView  # the run that describes them (persona, turns, models)
    cases: bool = False  # a judge_check dataset: JudgeCase records, not Conversation records
    sha: str | None = None  # the conversations file's SHA-256: later runs that read it tag it


def conversation_sets(uri: str, run_id: str) -> list[ConversationSet]:
    picked = run(uri, run_id)
    if picked is None:
        return []
    if picked.stage in FLOWS:
        runs = descendants(uri, picked)
        sets = [_from_conversations_run(uri, r) for r in runs if r.stage in MAKES_CONVERSATIONS]
        produced = {r.tags.get(names.output_sha("conversations")) for r in runs if r.stage in MAKES_CONVERSATIONS}
        sets += [
            _from_evaluate_run(uri, r)
            for r in runs
            if r.stage == "evaluate" and r.tags.get(names.INPUT_SHA) not in produced
        ]
        return sorted(sets, key=lambda s: (s.job.start_ms, s.label))
    if picked.stage in MAKES_CONVERSATIONS:
        return [_from_conversations_run(uri, picked)]
    if picked.stage == "evaluate":
        return [_from_evaluate_run(uri, picked)]
    dataset = input_artifact(uri, picked.run_id) if picked.stage == "judge_check" else None
    if dataset:
        return [ConversationSet("labelled cases", picked.run_id, dataset, (picked.run_id,), None, picked, cases=True)]
    return []


def _from_conversations_run(uri: str, r: RunView) -> ConversationSet:
    sha = r.tags.get(names.output_sha("conversations"))
    judges = find(uri, f"tags.`{names.INPUT_SHA}` = {quote(sha)}") if sha else []
    judged = tuple(j.run_id for j in judges if j.stage == "evaluate")
    contexts = r.run_id if r.stage == "conversations" else None  # a branch run's input is conversations
    return ConversationSet(r.describe(), r.run_id, names.CONVERSATIONS, judged, contexts, r, sha=sha)


def _from_evaluate_run(uri: str, r: RunView) -> ConversationSet:
    sha = r.tags.get(names.INPUT_SHA)
    producers = find(uri, f"tags.`{names.output_sha('conversations')}` = {quote(sha)}") if sha else []
    # Other evaluate runs of the same conversations come after the one picked.
    others = (
        [j.run_id for j in find(uri, f"tags.`{names.INPUT_SHA}` = {quote(sha)}") if j.stage == "evaluate"]
        if sha
        else []
    )
    judged = (r.run_id, *[o for o in others if o != r.run_id])
    source = producers[0] if producers else None
    return ConversationSet(
        r.describe(),
        r.run_id,
        input_artifact(uri, r.run_id) or "inputs/conversations.jsonl",
        judged,
        source.run_id if source else None,
        source or r,
        sha=sha,
    )


def repairs(uri: str, sha: str) -> dict[str, Repair]:
    """The slips of these conversations repaired by the newest repair run that read them (by id)."""
    runs = [r for r in find(uri, f"tags.`{names.INPUT_SHA}` = {quote(sha)}") if r.stage == "repair"]
    if not runs:
        return {}
    newest = max(runs, key=lambda r: r.start_ms)
    return {r.conversation_id: r for r in _records(uri, newest.run_id, names.REPAIRS, Repair)}


def set_conversations(uri: str, cs: ConversationSet) -> list[Conversation]:
    if cs.cases:
        return [c.conversation for c in judge_cases(uri, cs.source_run, cs.path)]
    return conversations(uri, cs.source_run, cs.path)


def set_contexts(uri: str, cs: ConversationSet) -> dict[str, Context]:
    return {c.id: c for c in contexts(uri, cs.contexts_run)} if cs.contexts_run else {}


def evaluate_runs_in(uri: str, picked: RunView) -> list[RunView]:
    """The evaluate runs a run stands for: itself, or those of its flow."""
    if picked.stage in ("evaluate", "judge_check"):
        return [picked]
    if picked.stage in FLOWS:
        return [r for r in descendants(uri, picked) if r.stage == "evaluate"]
    if picked.stage in MAKES_CONVERSATIONS:
        return [r for r in (run(uri, i) for i in _from_conversations_run(uri, picked).judged_by) if r]
    return []


# --- fine-tuned models -----------------------------------------------------------------------


def finetuned_models(uri: str, registry: Path) -> list[FineTunedModel]:
    """The registry file, plus fine-tuning runs in MLflow that it does not list (e.g. another machine's,
    on a shared tracking server). The registry's record wins for the same job key."""
    records = {r.key: r for r in Catalog(registry).all()}
    for r in find(uri, f"tags.`{names.STAGE}` = 'finetune'"):
        job = json_artifact(uri, r.run_id, names.FINETUNE_JOB)
        if job:
            record = FineTunedModel.model_validate(job)
            records.setdefault(record.key, record)
    return sorted(records.values(), key=lambda r: r.created_at, reverse=True)


def loops_of(uri: str, model: str) -> list[RunView]:
    """Closed-loop runs whose fine-tuned assistant is `model` (their before/after metrics)."""
    return find(uri, f"tags.`{names.TUNED_MODEL}` = {quote(model)} AND tags.`{names.KIND}` = 'finetune_loop'")


# --- labels (the Review page) ------------------------------------------------------------------


def labels(path: Path) -> list[JudgeCase]:
    """The labelled cases of a labels file, the latest label of each case (a relabel supersedes)."""
    return latest_by_id(read_records_jsonl(path, JudgeCase, tolerate_torn_tail=True)) if path.is_file() else []


def judge_checks(uri: str, path: Path) -> list[RunView]:
    """judge_check runs on this labels file, newest first."""
    return [
        r
        for r in find(uri, f"tags.`{names.JUDGE_CHECK_DATASET_PATH}` = {quote(str(path.resolve()))}")
        if r.stage == "judge_check"
    ]


def labels_sha(path: Path) -> str | None:
    return file_sha256(path) if path.is_file() else None


# --- a stage's *_run input -------------------------------------------------------------------------


def fetch_run_artifact(run_id: str, artifact: str, destination: Path, tracking_enabled: bool) -> Path:
    """Download `artifact` from an MLflow run of the configured store (a stage's *_run input)."""
    if not tracking_enabled:
        raise ConfigError("a *_run input needs MLflow", "set tracking.enabled=true or pass the file path instead")
    try:
        status = mlflow.get_run(run_id).info.status
    except MlflowException:
        raise InputError(
            f"no MLflow run '{run_id}' in {mlflow.get_tracking_uri()}",
            "copy the run id from the MLflow UI (or pass the file path instead)",
        ) from None
    if status != "FINISHED":
        log.warning("MLflow run %s is %s: its %s may be incomplete", run_id, status, artifact)
    try:
        return Path(
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=str(destination))
        )
    except (MlflowException, OSError):
        present = [a.path for a in mlflow.MlflowClient().list_artifacts(run_id)]
        raise InputError(
            f"MLflow run {run_id} has no artifact '{artifact}' (it has: {', '.join(present) or 'none'})",
            "pick the run of the stage that writes it",
        ) from None
