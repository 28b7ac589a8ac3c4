"""What every judge shares: the transcript with turn numbers, an output schema built for the
conversation at hand (a 1-10 score, a rationale, evidence turns that exist), the prompt. The judge
gives the score only: pass/fail is the score against evaluation.pass_threshold, so the two can
never contradict each other."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, create_model

from chareval.schemas import Conversation
from chareval.templates import fill

Score = Literal[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]  # an enum: grammars and JSON schemas enforce it

# The judges of a conversation share their system prompt (the instructions, what the assistant was
# given, the transcript) and differ only in the message after it (the criterion): a provider that
# reuses a prompt's prefix (the embedded model: llm/providers/prefix.py) reads the shared part once.
JUDGE_SYSTEM = """You are an impartial evaluator of role-play conversations between an AI assistant \
playing a persona and a simulated user. Below are everything the assistant was given and the \
transcript; the message that follows names the one criterion you judge and its rubric. Read the whole \
transcript; cite the turn numbers that support your verdict.

Everything the assistant was given (its documents first, then its persona and boundaries):
{given}

Transcript:
{transcript}"""

JUDGE_CRITERION = """Criterion: {name}
{rubric}
{materials}
Answer with: score (1 = fails the criterion completely, 10 = meets it fully; {pass_threshold} or more \
means the conversation meets the criterion), a short rationale, and evidence_turns (the turn numbers you \
rely on)."""


def transcript(conversation: Conversation) -> str:
    speaker = {"assistant": "ASSISTANT", "user": "USER"}
    return "\n\n".join(f"[turn {m.turn}] {speaker[m.role]}: {m.content}" for m in conversation.messages)


class Evaluator:
    """A judge criterion. Subclasses name themselves, say what the judge sees beside the
    transcript, and may add fields to the output schema."""

    name: ClassVar[str]

    def __init__(self, rubric: str, pass_threshold: int):
        self.rubric = rubric.strip()  # a template: filled from each conversation's characters
        self.pass_threshold = pass_threshold
        self._schemas: dict[tuple[tuple[int, str], ...], type[BaseModel]] = {}

    def rubric_for(self, conversation: Conversation) -> str:
        if conversation.characters is None:
            raise ValueError(f"{conversation.id} has no characters: the evaluate stage fills them first")
        return fill(self.rubric, conversation.characters.rubric_values())

    def materials(self, conversation: Conversation) -> str:
        """What this judge sees besides what every judge sees (the assistant's prompt, the
        transcript), shown with its rubric."""
        return ""

    def extra_fields(self, conversation: Conversation) -> dict[str, Any]:
        return {}

    def schema(self, conversation: Conversation) -> type[BaseModel]:
        """The verdict's model. It depends only on the conversation's turns and who spoke them, so one
        class serves every conversation of that shape (pydantic takes milliseconds to make one, and
        the JSON schema of a class is computed once)."""
        shape = tuple((m.turn, m.role) for m in conversation.messages)
        if shape not in self._schemas:
            self._schemas[shape] = self._make_schema(conversation)
        return self._schemas[shape]

    def _make_schema(self, conversation: Conversation) -> type[BaseModel]:
        turns = tuple(m.turn for m in conversation.messages)
        turn = Literal[turns]  # type: ignore[valid-type]  # only turns that exist can be cited
        return create_model(
            f"{self.name.title().replace('_', '')}Judgment",
            score=(Score, Field(description="1 (fails completely) to 10 (meets fully)")),
            rationale=(str, Field(min_length=1, max_length=600)),
            evidence_turns=(list[turn], Field(max_length=8)),
            **self.extra_fields(conversation),
        )

    def prompt(self, conversation: Conversation) -> tuple[str, str]:
        """(system, message): the system prompt is the same for every judge of the conversation."""
        system = JUDGE_SYSTEM.format(given=conversation.assistant_system_prompt, transcript=transcript(conversation))
        materials = self.materials(conversation).strip()
        criterion = JUDGE_CRITERION.format(
            name=self.name,
            rubric=self.rubric_for(conversation),
            materials=f"\n{materials}\n" if materials else "",
            pass_threshold=self.pass_threshold,
        )
        return system, criterion

    def passes(self, score: int) -> bool:
        return score >= self.pass_threshold


def assistant_turns(conversation: Conversation) -> tuple[int, ...]:
    return tuple(m.turn for m in conversation.messages if m.role == "assistant")
