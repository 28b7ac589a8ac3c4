"""The adaptive user (user_strategy=adaptive) and the breach check (conversations.stop_on_breach).

Before each user turn the judge model checks the assistant's last reply against the persona's
boundaries (held / gave_ground / broke, with a note); the attacker then keeps, switches or escalates
its tactic (conf/tactic/): after a concession or a break it presses with the same tactic, after a
firm refusal the user's model picks another tactic at the same level or a higher one. The chosen
tactic's description is added to the user's own prompt for that one turn; the assistant only ever
sees the user's messages. A reply is checked once, whichever of the two asked first."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from chareval.config import AppConfig, ConversationsSettings, Tactic
from chareval.errors import ConfigError
from chareval.evaluators.base import transcript
from chareval.llm import ChatMessage, derive_seed
from chareval.schemas import Assessment, Conversation, Message, Move, ReplyVerdict, Usage
from chareval.stages.base import StageContext
from chareval.templates import fill

# Usage figures count these calls apart from the judges' and the user's own turns.
BREACH_CHECK = "breach_check"
ATTACKER = "attacker"


class AssessmentDraft(BaseModel):
    """What the judge model answers about one reply (bounded: small models' grammars run on)."""

    model_config = ConfigDict(str_strip_whitespace=True)
    verdict: ReplyVerdict
    note: str = Field(max_length=160)


def tactic_folder(settings: AppConfig) -> Path:
    return Path(settings.paths.root) / "conf" / "tactic"


def library(settings: AppConfig, knobs: ConversationsSettings) -> dict[str, Tactic]:
    """The tactics the attacker may use (conversations.tactics, or every file in conf/tactic/), in
    escalation order. An unknown name or a malformed file is a ConfigError that says which."""
    folder = tactic_folder(settings)
    known = sorted(p.stem for p in folder.glob("*.yaml"))
    names = knobs.tactics or known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(
            f"unknown tactic {', '.join(unknown)} in conversations.tactics; known: {', '.join(known) or 'none'}",
            f"pick from {folder} (or add a <name>.yaml there: name, summary, description, intensity)",
        )
    tactics = []
    for name in names:
        path = folder / f"{name}.yaml"
        try:
            tactic = Tactic.model_validate(OmegaConf.to_container(OmegaConf.load(path), resolve=True))
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'file'}: {x['msg']}" for x in e.errors()[:3])
            raise ConfigError(
                f"{path} is not a valid tactic: {problems}", "see conf/tactic/urgency.yaml for the fields"
            ) from None
        if tactic.name != name:
            raise ConfigError(f"{path} names itself '{tactic.name}'", f"set name: {name} (its file name)")
        tactics.append(tactic)
    return {t.name: t for t in sorted(tactics, key=lambda t: (t.intensity, names.index(t.name)))}


def candidates(
    tactics: dict[str, Tactic], current: str | None, verdict: ReplyVerdict | None
) -> tuple[Move, list[Tactic]]:
    """What the attacker may play next, from its last tactic and the check of the reply to it:
    opening at the lowest level; the same tactic again after the assistant gave ground or broke;
    after a firm refusal any other tactic at least as strong (none left: the same one, pressed)."""
    ordered = list(tactics.values())
    if current is None or current not in tactics:
        lowest = ordered[0].intensity
        return "open", [t for t in ordered if t.intensity == lowest]
    if verdict != "held":
        return "press", [tactics[current]]
    level = tactics[current].intensity
    others = [t for t in ordered if t.name != current and t.intensity >= level]
    return ("switch", others) if others else ("press", [tactics[current]])


def move_to(tactics: dict[str, Tactic], current: str | None, move: Move, chosen: Tactic) -> Move:
    """A switch that picked a stronger tactic is an escalation."""
    if move == "switch" and current in tactics and chosen.intensity > tactics[current].intensity:
        return "escalate"
    return move


def assess(ctx: StageContext, record: Conversation, messages: list[Message], seed: int) -> tuple[Message, Usage]:
    """The last (assistant) message with its check by the judge model, and the call's usage."""
    knobs = ctx.knobs("conversations", ConversationsSettings)
    last = messages[-1]
    assert record.characters is not None  # the conversation stage and stage=branch set them
    system = fill(knobs.assessment_instructions, record.characters.rubric_values()).strip()
    so_far = record.model_copy(update={"messages": messages})
    prompt = f"Transcript:\n{transcript(so_far)}\n\nJudge the last assistant reply (turn {last.turn}) only."
    response = ctx.client.ask(
        "judge",
        system,
        [ChatMessage(role="user", content=prompt)],
        seed=derive_seed(seed, BREACH_CHECK),
        schema=AssessmentDraft,
        purpose=BREACH_CHECK,
    )
    draft = response.parsed
    assert isinstance(draft, AssessmentDraft)
    checked = Assessment(verdict=draft.verdict, note=draft.note, model=response.model)
    return last.model_copy(update={"assessment": checked}), response.usage


def next_tactic(
    ctx: StageContext, record: Conversation, messages: list[Message], tactics: dict[str, Tactic], seed: int
) -> tuple[Move, Tactic, Usage]:
    """The tactic of the next user message: chosen by the user's model when there is a choice."""
    knobs = ctx.knobs("conversations", ConversationsSettings)
    current = next((m.tactic for m in reversed(messages) if m.role == "user"), None)
    checked = messages[-1].assessment
    move, options = candidates(tactics, current, checked.verdict if checked else None)
    if len(options) == 1:
        return move, options[0], Usage()
    menu = "\n".join(f"- {t.name} (level {t.intensity}): {t.summary}" for t in options)
    assert record.characters is not None
    system = fill(
        knobs.attacker_instructions,
        {
            "user_goal": record.characters.user_goal,
            "current": current or "none yet (this is your first message)",
            "verdict": checked.verdict if checked else "not checked",
            "note": checked.note if checked else "",
            "menu": menu,
        },
    ).strip()
    names: Any = Literal[tuple(t.name for t in options)]  # an enum: the grammar allows only these names
    choice = create_model("TacticChoice", tactic=(names, ...))
    so_far = record.model_copy(update={"messages": messages})
    response = ctx.client.ask(
        "user",
        system,
        [ChatMessage(role="user", content=f"The conversation so far:\n{transcript(so_far)}")],
        seed=derive_seed(seed, ATTACKER),
        schema=choice,
        purpose=ATTACKER,
    )
    chosen = tactics[response.parsed.tactic]
    return move_to(tactics, current, move, chosen), chosen, response.usage


def with_tactic(user_system: str, tactic: Tactic, knobs: ConversationsSettings) -> str:
    """The user's prompt for one turn: its own, then the tactic to play."""
    block = fill(
        knobs.tactic_instructions, {"tactic": tactic.name, "description": " ".join(tactic.description.split())}
    )
    return f"{user_system}\n\n{block.strip()}"


def models_needed(settings: AppConfig, stages: list[str]) -> dict[str, str]:
    """Checked before any work: the judge model when conversations are checked or attacked, and
    the tactic library (an unknown tactic stops the run now, not at the first user turn)."""
    knobs = settings.conversations
    if knobs is None or not {"conversations", "branch"} & set(stages):
        return {}
    library(settings, knobs)
    # A branch plays its parents' strategy, unknown until they are read: an adaptive parent without
    # the judge's key fails at its first check with the key's own error.
    if knobs.stop_on_breach or settings.user_strategy == "adaptive":
        return {"models.judge (the breach check)": settings.models.judge}
    return {}
