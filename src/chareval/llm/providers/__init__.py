"""One module per model provider; each registers itself with chareval.llm.registry."""
