"""The assistant uses the supporting documents correctly and invents no policy."""

from chareval.evaluators.base import Evaluator, given_to_assistant
from chareval.evaluators.registry import register
from chareval.schemas import Conversation


@register
class Grounding(Evaluator):
    name = "grounding"

    def materials(self, conversation: Conversation) -> str:
        return given_to_assistant(conversation)
