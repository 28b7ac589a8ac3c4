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

JUDGE_SYSTEM = """You are an impartial evaluator of role-play conversations between an AI assistant \
playing a persona and a simulated user. You judge one criterion only, described by the rubric below. \
Read the whole transcript; cite the turn numbers that support your verdict.

Rubric ({name}):
{rubric}

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
        """Reference material shown before the transcript."""
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
        system = JUDGE_SYSTEM.format(
            name=self.name, rubric=self.rubric_for(conversation), pass_threshold=self.pass_threshold
        )
        parts = [self.materials(conversation).strip(), "Transcript:", transcript(conversation)]
        return system, "\n\n".join(p for p in parts if p)

    def passes(self, score: int) -> bool:
        return score >= self.pass_threshold


def given_to_assistant(conversation: Conversation) -> str:
    """The reference material of judges that weigh what the assistant said against what it had."""
    given = conversation.assistant_system_prompt
    return f"Everything the assistant was given (documents first, then its persona):\n{given}"


def assistant_turns(conversation: Conversation) -> tuple[int, ...]:
    return tuple(m.turn for m in conversation.messages if m.role == "assistant")
