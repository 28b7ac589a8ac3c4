"""How the two sides of a conversation are prompted, each from its own point of view."""

from __future__ import annotations

from chareval.config import Persona, UserPersona
from chareval.llm import ChatMessage
from chareval.schemas import Context, Message


def documents_block(context: Context) -> str:
    parts = [f"## {d.title}\n{d.content.strip()}" for d in context.documents]
    return "Supporting documents for this conversation:\n\n" + "\n\n".join(parts)


def assistant_system_prompt(persona: Persona, context: Context) -> str:
    """The context's supporting documents are prepended to the persona's prompt (as in the seed)."""
    return f"{documents_block(context)}\n\n---\n\n{persona.system_prompt.strip()}"


def user_system_prompt(user_persona: UserPersona, context: Context) -> str:
    return user_persona.system_prompt.format(scenario=context.scenario, user_goal=context.user_goal).strip()


def assistant_view(opening_prompt: str, messages: list[Message]) -> list[ChatMessage]:
    """The assistant opens, so its view starts with the opening prompt as the user's turn."""
    return [ChatMessage(role="user", content=opening_prompt)] + [
        ChatMessage(role=m.role, content=m.content) for m in messages
    ]


def user_view(messages: list[Message]) -> list[ChatMessage]:
    """The simulator plays the user, so roles are flipped: the assistant's lines arrive as 'user'."""
    flip = {"assistant": "user", "user": "assistant"}
    return [ChatMessage(role=flip[m.role], content=m.content) for m in messages]
