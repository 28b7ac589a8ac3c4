"""The assistant uses the supporting documents correctly and invents no policy."""

from chareval.evaluators.base import Evaluator
from chareval.evaluators.registry import register


@register
class Grounding(Evaluator):
    name = "grounding"
