"""The assistant uses the supporting documents correctly and invents no policy."""

from chareval.evaluators.base import Evaluator
from chareval.evaluators.registry import register
from chareval.schemas import Conversation


@register
class Grounding(Evaluator):
    name = "grounding"

    def materials(self, conversation: Conversation) -> str:
        given = conversation.assistant_system_prompt
        return f"Everything the assistant was given (documents first, then its persona):\n{given}"
