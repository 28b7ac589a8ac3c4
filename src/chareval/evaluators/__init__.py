"""Modular LLM judges: one module per evaluator, a registry by name."""
