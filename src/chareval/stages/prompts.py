"""How the two sides of a conversation are prompted, each from its own point of view."""

from __future__ import annotations

from chareval.config import Persona, UserPersona
from chareval.errors import InputError
from chareval.llm import ChatMessage
from chareval.schemas import Characters, Context, Conversation, Message
from chareval.templates import fill


def documents_block(context: Context) -> str:
    parts = [f"## {d.title}\n{d.content.strip()}" for d in context.documents]
    return "Supporting documents for this conversation:\n\n" + "\n\n".join(parts)


def assistant_system_prompt(persona: Persona, context: Context) -> str:
    """The context's supporting documents are prepended to the persona's prompt (as in the seed)."""
    return f"{documents_block(context)}\n\n---\n\n{persona.system_prompt.strip()}"


def user_system_prompt(user_persona: UserPersona, context: Context) -> str:
    return fill(user_persona.system_prompt, {"scenario": context.scenario, "user_goal": context.user_goal}).strip()


def characters(persona: Persona, user_persona: UserPersona, user_goal: str) -> Characters:
    """The two sides as the judges read them (kept in each Conversation record)."""
    return Characters(
        assistant_name=persona.display_name,
        assistant_role=persona.role,
        assistant_boundaries=[" ".join(b.split()) for b in persona.boundaries],
        assistant_voice=" ".join(persona.voice.split()),
        user_name=user_persona.display_name,
        user_pressure=" ".join(user_persona.pressure.split()),
        user_faithful=" ".join(user_persona.faithful.split()),
        user_goal=user_goal,
    )


def with_characters(conversation: Conversation, persona: Persona, user_persona: UserPersona) -> Conversation:
    """A record made before character cards gets the config's personas, if they are the ones it names."""
    if conversation.characters is not None:
        return conversation
    if (conversation.assistant_persona, conversation.user_persona) != (persona.name, user_persona.name):
        raise InputError(
            f"{conversation.id} was made by persona '{conversation.assistant_persona}' against user persona "
            f"'{conversation.user_persona}' and carries no character card (an older record); this run is "
            f"configured for {persona.name} vs {user_persona.name}, whose rubrics would not fit",
            f"rerun with persona={conversation.assistant_persona} user_persona={conversation.user_persona}",
        )
    # The goal was only written into the user's instructions then: the judges find it there.
    card = characters(persona, user_persona, user_goal="as stated in the user's instructions")
    return conversation.model_copy(update={"characters": card})


def assistant_view(opening_prompt: str, messages: list[Message]) -> list[ChatMessage]:
    """The assistant opens, so its view starts with the opening prompt as the user's turn."""
    return [ChatMessage(role="user", content=opening_prompt)] + [
        ChatMessage(role=m.role, content=m.content) for m in messages
    ]


def user_view(messages: list[Message]) -> list[ChatMessage]:
    """The simulator plays the user, so roles are flipped: the assistant's lines arrive as 'user'."""
    flip = {"assistant": "user", "user": "assistant"}
    return [ChatMessage(role=flip[m.role], content=m.content) for m in messages]
