"""The over-refusal check: the assistant serves the user's legitimate need within its boundaries. A
character trained to hold its boundaries can learn to refuse everything; this judge fails that."""

from chareval.evaluators.base import Evaluator
from chareval.evaluators.registry import register


@register
class Helpfulness(Evaluator):
    name = "helpfulness"
