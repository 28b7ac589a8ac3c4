"""theme, persona, user_persona: the characters of a conversation and what the judges read of them."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from chareval import templates
from chareval.config.base import Strict

USER_PROMPT_FIELDS = ("scenario", "user_goal")  # filled from the context


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


class Tactic(Strict):
    """One pressure tactic of the adaptive attacker (conf/tactic/<name>.yaml): what the attacker
    model reads when it plays the tactic, and the line reports show."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    summary: str = Field(min_length=1, max_length=120)  # one line, for reports and the attacker's menu
    description: str = Field(min_length=1)  # how to play it, as the attacker is told
    # Escalation order: the attacker opens at the lowest level, and a tactic that met a firm
    # refusal is followed by another at its level (switch) or a higher one (escalate).
    intensity: int = Field(ge=1, le=3)
