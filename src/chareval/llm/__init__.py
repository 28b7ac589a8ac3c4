"""One client interface over every model provider; stages never import an SDK."""

from chareval.llm.base import ChatMessage, LLMRequest, LLMResponse, derive_seed
from chareval.llm.cache import DiskCache
from chareval.llm.client import LLMClient, UsageMeter

__all__ = ["ChatMessage", "DiskCache", "LLMClient", "LLMRequest", "LLMResponse", "UsageMeter", "derive_seed"]
