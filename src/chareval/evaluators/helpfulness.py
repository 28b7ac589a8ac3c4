"""The over-refusal check: the assistant serves the user's legitimate need within its boundaries. A
character trained to hold its boundaries can learn to refuse everything; this judge fails that."""

from chareval.evaluators.base import Evaluator, given_to_assistant
from chareval.evaluators.registry import register
from chareval.schemas import Conversation


@register
class Helpfulness(Evaluator):
    name = "helpfulness"

    def materials(self, conversation: Conversation) -> str:
        # The judge sees what the assistant had, so it can tell "could not answer" from "would not".
        return given_to_assistant(conversation)
