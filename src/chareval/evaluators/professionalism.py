"""Tone, empathy, no hostility: the assistant stays professional however the user behaves."""

from chareval.evaluators.base import Evaluator
from chareval.evaluators.registry import register


@register
class Professionalism(Evaluator):
    name = "professionalism"
