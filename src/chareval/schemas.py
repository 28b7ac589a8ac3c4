"""Records passed between stages and written to disk. Every reader validates against these."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION: Final = 1


class Record(BaseModel):
    """Base of every record a stage writes: strict keys and a schema version."""

    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1] = SCHEMA_VERSION


class Usage(BaseModel):
    """Token and cost totals for one call or a sum of calls. Latency is not kept here: records
    must be identical when a run is repeated (it goes to MLflow metrics instead)."""

    model_config = ConfigDict(extra="forbid")
    calls: int = 0
    cached_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0
    cost_usd: float = 0.0
    retries: int = 0
    fallbacks: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{k: getattr(self, k) + getattr(other, k) for k in Usage.model_fields})


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str
    content: str


class Context(Record):
    """One scenario for conversations: what the user is after, and documents the assistant gets."""

    id: str
    title: str
    scenario: str
    user_goal: str
    documents: list[Document]
    model: str

    def content_sha256(self) -> str:
        """What the context says, hashed: ids like ctx-001 are given again by every contexts run, so
        comparisons (stage=gate) match contexts by this."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


# Who speaks in a conversation (the opening message is the assistant's).
Speaker = Literal["assistant", "user"]


# The check of one assistant reply against the persona's boundaries (the adaptive attacker reads
# it; conversations.stop_on_breach ends the conversation at `broke`). Listed from worst to best: the
# mock provider answers a schema with its last value, so scripted runs hold unless told otherwise.
ReplyVerdict = Literal["broke", "gave_ground", "held"]
# How the adaptive attacker came to a tactic: its first, the same again after a concession, another
# of the same level, or a stronger one.
Move = Literal["open", "press", "switch", "escalate"]


class Assessment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verdict: ReplyVerdict
    note: str = ""
    model: str  # the judge model that checked it


class Message(BaseModel):
    """One message of a conversation, with the model that wrote it."""

    model_config = ConfigDict(extra="forbid")
    role: Speaker
    content: str
    turn: int = Field(ge=0)
    model: str
    thinking: str | None = None
    tactic: str | None = None  # a user message of user_strategy=adaptive: the tactic it played ...
    move: Move | None = None  # ... and how the attacker chose it
    assessment: Assessment | None = None  # an assistant message that was checked (adaptive, stop_on_breach)


class Characters(BaseModel):
    """What the judges read about the two sides, copied from the personas (and the context's user
    goal) when the conversation was made: a record is judged by its own characters, whatever the
    config of the evaluate run."""

    model_config = ConfigDict(extra="forbid")
    assistant_name: str
    assistant_role: str
    assistant_boundaries: list[str]
    assistant_voice: str
    user_name: str
    user_pressure: str
    user_faithful: str
    user_goal: str

    def rubric_values(self) -> dict[str, str]:
        """The values of the rubric placeholders (templates.RUBRIC_FIELDS)."""
        values = self.model_dump()
        values["assistant_boundaries"] = "\n".join(f"- {b}" for b in self.assistant_boundaries)
        return values


class Conversation(Record):
    """One simulated conversation; `error` is set when it could not be completed."""

    id: str
    context_id: str
    assistant_persona: str
    user_persona: str
    assistant_model: str
    user_model: str
    turns: int
    seed: int
    # Kept in the record so that prepare reproduces exactly what the assistant saw.
    assistant_system_prompt: str
    user_system_prompt: str
    opening_prompt: str
    messages: list[Message]
    usage: Usage
    error: str | None = None
    # Absent from records made before character cards: the evaluate stage then takes the config's
    # personas, which must be the ones the record names.
    characters: Characters | None = None
    # The conversation's MLflow trace (its model calls), which the evaluate stage and the dashboard's
    # Review page attach verdicts and labels to; None when it was not traced.
    trace_id: str | None = None
    context_sha256: str | None = None  # Context.content_sha256 of its context (absent in older records)
    user_strategy: Literal["persona", "adaptive"] = "persona"
    # conversations.stop_on_breach: whether each reply was checked, and the turn it broke at (None: it
    # held to the end, or was not checked).
    stop_on_breach: bool = False
    breach_turn: int | None = None
    # stage=branch: the conversation this one continues, and the first turn written anew (the
    # messages before it are the parent's, word for word).
    parent_id: str | None = None
    branched_at: int | None = None


class Evaluation(Record):
    """One judgment: a conversation x evaluator x judge model x sample. `error` is set (and the
    verdict fields are empty) when the judge gave no valid answer after one re-ask."""

    id: str
    conversation_id: str
    context_id: str
    context_sha256: str | None = None  # the conversation's, copied: verdicts pair up by context content
    evaluator: str
    judge_model: str  # the judge asked for
    answered_model: str | None = None  # the model that answered (differs after a fallback)
    sample: int = Field(ge=0)
    seed: int
    score: int | None = Field(default=None, ge=1, le=10)
    passed: bool | None = None
    rationale: str | None = None
    evidence_turns: list[int] = []
    details: dict[str, Any] = {}  # an evaluator's own fields, e.g. boundary_holding's slip_turn
    usage: Usage = Usage()
    error: str | None = None
    raw_text: str | None = None


class Selection(Record):
    """What stage=prepare did with one input conversation under prepare.select (prepare_selection.jsonl)."""

    conversation_id: str
    kept: bool
    rule: Literal[
        "all", "passed", "cut_before_slip", "failed", "no_slip_turn", "slip_at_first_turn", "no_verdicts", "errored"
    ]
    reason: str  # for a person: "failed boundary_holding (3/10)", "cut before the slip at turn 4"
    cut_before_turn: int | None = None


class Repair(Record):
    """stage=repair: a slipped assistant turn written again by the teacher and judged again
    (repairs.jsonl). `before`/`after`: evaluator -> mean score of its judgments (None: no verdict)."""

    id: str  # the conversation's id
    conversation_id: str
    turn: int
    original: str
    repaired: str | None = None
    teacher_model: str
    before: dict[str, float | None] = {}
    after: dict[str, float | None] = {}
    passed_after: bool = False
    kept: bool = False
    error: str | None = None
    usage: Usage = Usage()


class ErrorRecord(Record):
    """A work item that failed, with the reason and the raw model output when there was one."""

    stage: str
    item_id: str
    error: str
    raw_text: str | None = None


# --- what the contexts model is asked to produce (the code adds ids and provenance) ---------
# Lengths are bounded so that a small model's JSON grammar cannot run on forever; the spaces and
# newlines small models leave around their strings are stripped.
DRAFT = ConfigDict(str_strip_whitespace=True)


class DocumentDraft(BaseModel):
    model_config = DRAFT
    title: str = Field(min_length=1, max_length=80)
    content: str = Field(min_length=1, max_length=700)


class ContextAngles(BaseModel):
    """What stage=contexts plans first: one line per scenario, so that scenarios generated side by
    side still differ without each prompt listing every earlier one."""

    model_config = DRAFT
    angles: list[Annotated[str, Field(min_length=3, max_length=120)]] = Field(min_length=1)


class ContextDraft(BaseModel):
    model_config = DRAFT
    title: str = Field(min_length=1, max_length=80)
    scenario: str = Field(min_length=1, max_length=600)
    user_goal: str = Field(min_length=1, max_length=300)
    documents: list[DocumentDraft] = Field(min_length=1, max_length=3)


class JudgeCase(Record):
    """A hand-labelled conversation for checking a judge: the verdict each evaluator should give."""

    id: str
    note: str
    conversation: Conversation
    expected: dict[str, bool]  # evaluator -> passed


# A fine-tuning job's final statuses (Together's names; a local job ends "completed").
JOB_FAILED = frozenset({"error", "user_error", "cancelled"})
JOB_FINISHED = JOB_FAILED | {"completed"}


class FineTunedModel(Record):
    """One fine-tuning job and the model it produced, as kept in the registry of fine-tuned models.
    `model` is what goes into models.assistant (together/<output name> or local_lora/<name>)."""

    key: str  # hash of the training file and the settings: a rerun finds its job by it
    backend: Literal["together", "local_lora"]
    base_model: str
    name: str
    model: str | None = None  # set once the job has produced a model
    status: str
    job_id: str | None = None
    file_id: str | None = None
    train_file: str
    train_file_sha256: str
    settings: dict[str, Any]
    adapter_path: str | None = None  # local_lora: the PEFT adapter folder
    gguf_adapter_path: str | None = None  # local_lora: the same adapter for llama.cpp (None: served by transformers)
    events: list[str] = []
    mlflow_run_id: str | None = None
    # Together: a fingerprint of the key and endpoint the job was made with (never the key): another
    # account's job is not this account's to reuse (it answers 404 there).
    account: str | None = None
    created_at: str
    updated_at: str


class JobOutcome(Record):
    """How one job of a multirun ended, written to its run folder (job.json): the sweep's end reads
    them all, whichever launcher ran the jobs, for its summary and comparison."""

    num: int
    overrides: list[str]
    status: Literal["completed", "failed", "interrupted"]
    error: str | None = None
    run_dir: str
    run_id: str | None = None  # the job's top MLflow run
    choices: dict[str, str] = {}  # persona, user persona, turns, models per role, finetune, ...
    metrics: dict[str, float] = {}  # judge.<evaluator>.*, counts, cost_usd of the job's stages
    sweep: str | None = None  # which launch of the sweep wrote it (a rerun of a killed sweep is another)
    busy_pid: str | None = None  # refused: this process still held the job's run folder
