"""The simulated user followed its persona; a failing conversation is bad data for training."""

from chareval.evaluators.base import Evaluator
from chareval.evaluators.registry import register
from chareval.schemas import Conversation


@register
class UserSimulationFidelity(Evaluator):
    name = "user_simulation_fidelity"

    def materials(self, conversation: Conversation) -> str:
        return f"The simulated user's instructions:\n{conversation.user_system_prompt}"
