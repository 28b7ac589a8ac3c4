"""The assistant stays its persona (name, role, voice) throughout."""

from chareval.evaluators.base import Evaluator
from chareval.evaluators.registry import register
from chareval.schemas import Conversation


@register
class CharacterConsistency(Evaluator):
    name = "character_consistency"

    def materials(self, conversation: Conversation) -> str:
        return f"The assistant's persona (its system prompt):\n{conversation.assistant_system_prompt}"
