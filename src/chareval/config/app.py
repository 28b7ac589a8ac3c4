"""The whole composed config (AppConfig), and its validation with readable errors."""

from __future__ import annotations

import re
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from chareval import PROJECT_ROOT
from chareval.config.base import MODEL_PATTERN, ModelString, Strict
from chareval.config.characters import Persona, Theme, UserPersona
from chareval.config.finetune import FinetuneSettings
from chareval.config.models import Models
from chareval.config.spend import Budget, PlanSettings
from chareval.config.stages import (
    BranchSettings,
    ContextsSettings,
    ConversationsSettings,
    EvaluationSettings,
    FinetuneLoopSettings,
    GateSettings,
    JudgeCheckSettings,
    PipelineSettings,
    PrepareSettings,
    RepairSettings,
)
from chareval.errors import ConfigError


class Tracking(Strict):
    enabled: bool
    uri: str | None
    experiment: str = Field(min_length=1)
    # Model calls as traces and verdicts as feedback on them (the MLflow UI's GenAI pages).
    traces: bool = True


class Paths(Strict):
    root: str
    outputs: str
    cache: str
    registry: str


class AppConfig(Strict):
    # A stage added since (a module of chareval/stages that registers itself with its settings class)
    # brings its knobs as a key of its own; chareval.validation checks each such key against the
    # class its stage registers, and refuses any other.
    model_config = ConfigDict(extra="allow")

    turns: int = Field(ge=1, le=100)
    num_contexts: int = Field(ge=1)
    num_conversations: int = Field(ge=1)
    seed: int
    cache: bool
    # Print what the command would do (calls, tokens, cost, cache hits) and write plan.json; no model call.
    dry_run: bool
    budget: Budget
    plan: PlanSettings
    # How the simulated user plays: its persona's prompt every turn, or an attacker that picks a
    # tactic (conf/tactic/) before each turn from how the assistant answered.
    user_strategy: Literal["persona", "adaptive"]
    # Inputs of a stage run on its own (null unless given).
    context_file: str | None
    contexts_run: str | None
    input_file: str | None
    conversations_run: str | None
    evaluations_file: str | None
    evaluate_run: str | None
    output_file: str | None
    judge_model: ModelString | None
    train_file: str | None
    prepare_run: str | None
    job_id: str | None
    baseline: str | None  # stage=gate: an evaluations.jsonl or the MLflow run id of an evaluate run ...
    candidate: str | None  # ... and the one to compare with it
    paths: Paths
    theme: Theme
    persona: Persona
    user_persona: UserPersona
    models: Models
    tracking: Tracking
    evaluation: EvaluationSettings
    # The backend's own settings class replaces this once its registry is read (chareval.validation).
    finetune: FinetuneSettings
    # Stage knobs: present when that stage (or a flow that runs it) is selected.
    contexts: ContextsSettings | None = None
    conversations: ConversationsSettings | None = None
    prepare: PrepareSettings | None = None
    repair: RepairSettings | None = None
    judge_check: JudgeCheckSettings | None = None
    pipeline: PipelineSettings | None = None
    finetune_loop: FinetuneLoopSettings | None = None
    gate: GateSettings | None = None
    branch: BranchSettings | None = None

    def judges(self) -> list[str]:
        """The judge models (evaluate, repair, judge_check), by the one rule conf/evaluation/default.yaml
        states: judge_model=, else evaluation.judges, else models.judge."""
        if self.judge_model:
            return [self.judge_model]
        return list(self.evaluation.judges or [self.models.judge])

    @model_validator(mode="after")
    def _judges_allowed(self) -> AppConfig:
        policy = self.models.policy
        allowed = policy.allowed.get("judge") if policy else None
        for judge in self.judges():
            if allowed is not None and judge not in allowed:
                raise ValueError(
                    f"judge model {judge} is not allowed by the {self.models.name} preset; "
                    f"allowed: {', '.join(allowed)}"
                )
        return self

    @model_validator(mode="after")
    def _job_id_needs_together(self) -> AppConfig:
        if self.job_id and self.finetune.backend != "together":
            raise ValueError(
                f"job_id={self.job_id} follows a Together fine-tuning job, but finetune={self.finetune.backend} "
                "has no jobs to follow; add finetune=together_qwen3_32b (or pass train_file= instead)"
            )
        return self

    def derive(self, **changes: Any) -> AppConfig:
        """A copy with some values changed, validated again (the closed loop's held-out settings)."""
        derived = AppConfig.model_validate(_merge(self.model_dump(mode="json"), changes))
        # Settings validated by their registry's class (the backend's, a newer stage's knobs) stay so.
        for key in ("finetune", *(self.model_extra or {})):
            if key not in changes:
                setattr(derived, key, getattr(self, key))
        return derived


def _merge(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def register_resolvers() -> None:
    """Resolvers used in conf/: ${project_root:} is where outputs/ and mlruns/ go."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names at the parent of `loc`, to list next to an unknown key."""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        args = [a for a in getattr(annotation, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        current = args[0] if args else annotation
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else []


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(AppConfig, e["loc"])
            lines.append(f"  {key}: unknown key" + (f" (allowed here: {', '.join(allowed)})" if allowed else ""))
        elif e["type"] == "missing":
            lines.append(f"  {key}: missing")
        elif e["type"] == "string_pattern_mismatch" and e.get("ctx", {}).get("pattern") == MODEL_PATTERN:
            lines.append(f"  {key}={e.get('input')!r}: should be provider/model, e.g. local/smollm2-135m-instruct")
        elif not key:  # a rule across keys: its message names them
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        elif isinstance(e.get("input"), (dict, list)):  # a whole group: its message names the key
            lines.append(f"  {key}: {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {key}={e.get('input')!r}: {e['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


FIX = "correct the key on the command line or in conf/ (python src/run.py --cfg job shows the composed config)"


def parse_config(cfg: DictConfig) -> AppConfig:
    """Resolve the composed config (without the hydra node) and check it against the schema. The
    checks that need a registry (providers, evaluators) come on top: chareval.validation."""
    try:
        raw = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as e:  # interpolation / missing-value errors from OmegaConf
        raise ConfigError(f"the config does not resolve: {e}") from None
    assert isinstance(raw, dict)
    raw.pop("hydra", None)
    try:
        return AppConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError("invalid configuration:\n" + format_validation_error(e), FIX) from None


_SECRET_KEY = re.compile(r"(api_?key|secret|password|passwd|auth_token|access_token|bearer)$", re.IGNORECASE)


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key.rsplit(".", 1)[-1]))
