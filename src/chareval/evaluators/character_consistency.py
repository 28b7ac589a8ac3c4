"""The assistant stays its persona (name, role, voice) throughout."""

from chareval.evaluators.base import Evaluator
from chareval.evaluators.registry import register


@register
class CharacterConsistency(Evaluator):
    name = "character_consistency"
