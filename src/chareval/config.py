"""Typed schema of the composed Hydra config. Validated before any work, so a typo or a bad value
fails at once with the key named and the allowed values."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from omegaconf import DictConfig, OmegaConf
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from chareval import PROJECT_ROOT, templates
from chareval.errors import ConfigError

STAGES = ("contexts", "conversations", "prepare")
USER_PROMPT_FIELDS = ("scenario", "user_goal")  # filled from the context
CONTEXTS_FIELDS = ("theme_description", "theme_prompt", "assistant_name", "assistant_role", "index", "total", "previous_titles")
ROLES = ("contexts", "assistant", "user", "judge")
PROVIDERS = ("local", "anthropic", "openrouter", "openai_compatible", "together", "local_lora")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


ModelString = Annotated[str, Field(pattern=r"^[a-z_]+/.+$", description="provider/model")]


class Generation(Strict):
    max_tokens: int = Field(ge=1, le=200_000)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)


class LocalProvider(Strict):
    models: dict[str, str | None]
    n_ctx: int = Field(ge=512)
    n_threads: int | None = Field(default=None, ge=1)
    chat_format: str | None = None
    repeat_penalty: float = Field(default=1.0, ge=1.0, le=2.0)

    @classmethod
    def packaged(cls) -> LocalProvider:
        """Settings for the packaged SmolLM2 GGUF, for presets that configure no local model."""
        return cls(models={"smollm2-135m-instruct": None}, n_ctx=8192, repeat_penalty=1.15)


class RemoteProvider(Strict):
    # null = the provider's <NAME>_BASE_URL environment variable, else its public endpoint.
    base_url: str | None = None
    max_in_flight: int = Field(default=4, ge=1, le=256)


class Thinking(Strict):
    enabled: bool = True
    budget_tokens: int = Field(default=10_000, ge=1024)


class AnthropicProvider(RemoteProvider):
    thinking: Thinking = Thinking()


class OpenRouterProvider(RemoteProvider):
    # Route only to providers that honour every parameter (response_format above all).
    require_parameters: bool = True


class OpenAICompatibleProvider(RemoteProvider):
    base_url: str  # e.g. http://localhost:8000/v1 for vLLM, :11434/v1 for Ollama
    api_key_env: str | None = None  # the variable holding its key, if the server wants one


class Providers(Strict):
    local: LocalProvider | None = None
    anthropic: AnthropicProvider | None = None
    openrouter: OpenRouterProvider | None = None
    openai_compatible: OpenAICompatibleProvider | None = None
    together: RemoteProvider | None = None  # serves fine-tuned models (OpenAI-compatible API)


class RetrySettings(Strict):
    max_attempts: int = Field(default=6, ge=1, le=50)
    initial_backoff_s: float = Field(default=1.0, ge=0)
    max_backoff_s: float = Field(default=60.0, ge=0)
    attempt_timeout_s: float = Field(default=600.0, gt=0)
    total_timeout_s: float = Field(default=1800.0, gt=0)


class Price(Strict):
    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class Policy(Strict):
    """Allowed models per role, and fallbacks that must be configured (the seed's rules)."""

    allowed: dict[Literal["contexts", "assistant", "user", "judge"], list[str]]
    required_fallback: dict[str, str] = {}


class Models(Strict):
    name: str
    contexts: ModelString
    assistant: ModelString
    user: ModelString
    judge: ModelString
    generation: dict[Literal["contexts", "assistant", "user", "judge"], Generation]
    providers: Providers = Providers()
    # primary model -> the model that answers when the primary stays overloaded
    fallback: dict[str, ModelString] = {}
    policy: Policy | None = None
    retry: RetrySettings = RetrySettings()
    # USD per million tokens, used when the provider's response carries no cost
    prices: dict[str, Price] = {}

    @field_validator("contexts", "assistant", "user", "judge")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        provider = value.split("/", 1)[0]
        if provider not in PROVIDERS:
            raise ValueError(f"unknown provider '{provider}' in '{value}'; known providers: {', '.join(PROVIDERS)}")
        return value

    @model_validator(mode="after")
    def _policy_and_thinking(self) -> Models:
        if self.policy:
            for role, allowed in self.policy.allowed.items():
                if getattr(self, role) not in allowed:
                    raise ValueError(
                        f"models.{role}={getattr(self, role)} is not allowed by the {self.name} preset; "
                        f"allowed: {', '.join(allowed)}"
                    )
            for primary, required in self.policy.required_fallback.items():
                if primary in self.roles().values() and self.fallback.get(primary) != required:
                    raise ValueError(f"the {self.name} preset requires models.fallback.{primary}={required}")
        anthropic = self.providers.anthropic
        for role, model in self.roles().items():
            if model.startswith("anthropic/") and (anthropic is None or anthropic.thinking.enabled):
                gen = self.generation.get(role)
                budget = anthropic.thinking.budget_tokens if anthropic else Thinking().budget_tokens
                if gen and gen.max_tokens <= budget:
                    raise ValueError(f"models.generation.{role}.max_tokens must be above the thinking budget ({budget})")
                if gen and gen.temperature is not None:
                    raise ValueError(f"models.generation.{role}.temperature must be unset: thinking forbids it")
        return self

    def roles(self) -> dict[str, str]:
        return {role: getattr(self, role) for role in ROLES}


class Theme(Strict):
    """What the scenarios of stage=contexts are about (by default the user persona's own theme)."""

    name: str
    description: str
    prompt: str = Field(min_length=1)


def _normalized(text: str) -> str:
    return " ".join(text.split())


class Persona(Strict):
    """The assistant under test. `boundaries` and `voice` are what the judges read; each must appear
    word for word in the system prompt, so that the prose and the structured fields never drift."""

    name: str
    seed_name: str | None = None
    display_name: str
    role: str
    boundaries: list[str] = Field(min_length=1)
    voice: str = Field(min_length=1)
    opening_prompt: str = Field(min_length=1)
    system_prompt: str = Field(min_length=1)

    @model_validator(mode="after")
    def _fields_in_prompt(self) -> Persona:
        prompt = _normalized(self.system_prompt)
        for i, text in enumerate(self.boundaries):
            if _normalized(text) not in prompt:
                raise ValueError(f"boundaries.{i} does not appear word for word in system_prompt: {text[:60]!r}...")
        if _normalized(self.voice) not in prompt:
            raise ValueError("voice does not appear word for word in system_prompt")
        return self


class UserPersona(Strict):
    """The simulated user. `pressure` (what it pushes the assistant to do) and `faithful` (what a
    faithful simulation looks like) are what the judges read."""

    name: str
    display_name: str
    description: str = Field(min_length=1)
    pressure: str = Field(min_length=1)
    faithful: str = Field(min_length=1)
    system_prompt: str = Field(min_length=1)

    @field_validator("system_prompt")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        return templates.check(value, allowed=USER_PROMPT_FIELDS, required=USER_PROMPT_FIELDS)


class Tracking(Strict):
    enabled: bool = True
    uri: str | None = None
    experiment: str = Field(min_length=1)


class Paths(Strict):
    root: str
    outputs: str
    cache: str
    registry: str


class ContextsStage(Strict):
    max_documents: int = Field(ge=1, le=3)
    instructions: str = Field(min_length=1)

    @field_validator("instructions")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        return templates.check(value, allowed=CONTEXTS_FIELDS)


class ConversationsStage(Strict):
    retry_empty_reply: bool = True


class PrepareStage(Strict):
    skip_errored: bool = True


class LoraSettings(Strict):
    r: int = Field(default=8, ge=1, le=256)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"


class LocalLoraFinetune(Strict):
    backend: Literal["local_lora"]
    base_model: ModelString
    n_epochs: int = Field(default=3, ge=1, le=100)
    learning_rate: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=4, ge=1)
    max_seq_tokens: int = Field(default=1024, ge=64)
    lora: LoraSettings = LoraSettings()
    suffix: str | None = Field(default=None, max_length=40)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("base_model")
    @classmethod
    def _local_base(cls, value: str) -> str:
        if not value.startswith("local/"):
            raise ValueError("the local_lora backend trains a local/<alias or .gguf> model")
        return value


class TogetherFinetune(Strict):
    backend: Literal["together"]
    base_model: Literal["Qwen/Qwen3-32B"]  # the seed: only Qwen/Qwen3-32B is fine-tuned on Together
    n_epochs: int = Field(default=3, ge=1, le=20)
    suffix: str | None = Field(default=None, max_length=40)
    lora: bool = True
    learning_rate: float = Field(default=1e-5, gt=0)
    batch_size: int | Literal["max"] = "max"
    validation_file: str | None = None
    n_evals: int = Field(default=0, ge=0)
    train_on_inputs: bool | Literal["auto"] = "auto"
    context_length: int = Field(default=32768, ge=512)
    wait: bool = True
    poll_interval_s: float = Field(default=30.0, gt=0)


class EvaluateStage(Strict):
    skip_errored: bool = True


class JudgeCheckStage(Strict):
    dataset: str


class FinetuneLoopStage(Strict):
    holdout_fraction: float = Field(default=0.5, gt=0.0, lt=1.0)


class PipelineStage(Strict):
    stages: list[Literal["contexts", "conversations", "prepare", "finetune", "evaluate"]] = Field(min_length=1)


class Evaluation(Strict):
    evaluators: list[str] = Field(min_length=1)
    judge_samples: int = Field(ge=1, le=20)
    judges: list[ModelString] | None = Field(default=None, min_length=1)
    max_error_fraction: float = Field(ge=0.0, le=1.0)
    rubrics: dict[str, str]

    @model_validator(mode="after")
    def _known_evaluators(self) -> Evaluation:
        from chareval.evaluators.registry import load_all

        known = load_all()
        for name in self.evaluators:
            if name not in known:
                raise ValueError(f"unknown evaluator '{name}'; known: {', '.join(sorted(known))}")
            if not self.rubrics.get(name, "").strip():
                raise ValueError(f"evaluator '{name}' has no rubric: add evaluation.rubrics.{name}")
        for name, rubric in self.rubrics.items():
            try:
                templates.check(rubric, allowed=templates.RUBRIC_FIELDS)
            except ValueError as e:
                raise ValueError(f"evaluation.rubrics.{name}: {e}") from None
        return self


class AppConfig(Strict):
    turns: int = Field(ge=1, le=100)
    num_contexts: int = Field(ge=1)
    num_conversations: int = Field(ge=1)
    seed: int
    cache: bool
    context_file: str | None = None
    contexts_run: str | None = None
    input_file: str | None = None
    conversations_run: str | None = None
    output_file: str | None = None
    judge_model: ModelString | None = None
    paths: Paths
    theme: Theme
    persona: Persona
    user_persona: UserPersona
    models: Models
    tracking: Tracking
    evaluation: Evaluation
    finetune: Annotated[LocalLoraFinetune | TogetherFinetune, Field(discriminator="backend")]
    train_file: str | None = None
    prepare_run: str | None = None
    job_id: str | None = None
    # Stage knobs: present when that stage (or the pipeline that includes it) is selected.
    contexts: ContextsStage | None = None
    conversations: ConversationsStage | None = None
    prepare: PrepareStage | None = None
    evaluate: EvaluateStage | None = None
    judge_check: JudgeCheckStage | None = None
    pipeline: PipelineStage | None = None
    finetune_loop: FinetuneLoopStage | None = None

    def judges(self) -> list[str]:
        """The judge models of stage=evaluate: judge_model=, else evaluation.judges, else models.judge."""
        if self.judge_model:
            return [self.judge_model]
        return list(self.evaluation.judges or [self.models.judge])

    @model_validator(mode="after")
    def _judges_allowed(self) -> AppConfig:
        policy = self.models.policy
        allowed = policy.allowed.get("judge") if policy else None
        for judge in self.judges():
            if judge.split("/", 1)[0] not in PROVIDERS:
                raise ValueError(f"unknown provider in judge model '{judge}'; known providers: {', '.join(PROVIDERS)}")
            if allowed is not None and judge not in allowed:
                raise ValueError(f"judge model {judge} is not allowed by the {self.models.name} preset; allowed: {', '.join(allowed)}")
        return self


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


def format_validation_error(err: ValidationError, raw: dict) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(AppConfig, e["loc"])
            lines.append(f"  {key}: unknown key" + (f" (allowed here: {', '.join(allowed)})" if allowed else ""))
        elif e["type"] == "missing":
            lines.append(f"  {key}: missing")
        elif isinstance(e.get("input"), (dict, list)):  # a whole group: its message names the key
            lines.append(f"  {key}: {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {key}={e.get('input')!r}: {e['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def validate_config(cfg: DictConfig) -> AppConfig:
    """Resolve and validate the composed config (without the hydra node)."""
    try:
        raw = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as e:  # interpolation / missing-value errors from OmegaConf
        raise ConfigError(f"the config does not resolve: {e}") from None
    raw.pop("hydra", None)
    try:
        return AppConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(
            "invalid configuration:\n" + format_validation_error(e, raw),
            "correct the key on the command line or in conf/ (python src/run.py --cfg job shows the composed config)",
        ) from None


_SECRET_KEY = re.compile(r"(api_?key|secret|password|passwd|auth_token|access_token|bearer)$", re.IGNORECASE)


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key.rsplit(".", 1)[-1]))
