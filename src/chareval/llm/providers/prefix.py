"""Prompt-prefix reuse for the embedded model: llama.cpp reads a prompt at ~300 tokens a second on 2
cores (~480 with the weights as Q8_0, reencode.py), and most prompts begin with what an earlier one
read (the judges of a conversation share its transcript; each turn of a conversation extends the
last one seen by that side).

A prompt is read message by message: each message (as the chat template renders it) is one
evaluation, at its position, on top of the messages before it. What a context holds is therefore a
chain of messages; a new prompt keeps the longest chain of whole messages it shares, drops the rest
and reads only its own. Because every message is always read the same way on top of the same
earlier messages, a reused prefix holds exactly what reading it afresh would: a reply does not depend
on which calls came before it (the old rule, a fresh read per call, made sure of the same).

With several contexts per model (models.providers.local.contexts), the assistant's and the user's
turns, which alternate, each extend a chain of their own: a call takes the context whose chain it
shares most with (else the one used least recently). A context is loaded when a call shares nothing
with what the loaded ones hold: a stage whose prompts all share a beginning (the contexts stage, the
judges of one conversation) keeps to one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TEMPLATE_FORMAT = "chat_template.default"  # llama-cpp-python's name for the GGUF's own template


@dataclass
class Slot:
    llm: Any  # a llama_cpp.Llama: its own context (KV cache) on the shared weights
    chain: list[tuple[int, ...]] = field(default_factory=list)  # the messages its KV holds, in order
    used: int = 0  # when it last served (a counter), for least-recently-used choice


class PrefixReader:
    """The contexts of one model and what each holds. Calls are serialised by the caller."""

    def __init__(self, load: Callable[[int], Any], slots: int):
        self._load = load
        self._slots: list[Slot] = []
        self._count = slots
        self._clock = 0
        self._formatter: Any = None
        self.reused_tokens = 0  # prompt tokens kept from an earlier call rather than read again
        self.read_tokens = 0

    @property
    def contexts_loaded(self) -> int:
        return len(self._slots)

    def _slot_list(self) -> list[Slot]:
        if not self._slots:
            self._slots = [Slot(self._load(0))]
        return self._slots

    def close(self) -> None:
        for slot in self._slots:
            slot.llm.close()
        self._slots = []

    def prepare(self, messages: list[dict[str, str]]) -> Any:
        """Choose a context for these messages and read into it every message but the last (the
        call reads the last, with the generation prompt, itself). Returns the Llama to call."""
        slots = self._slot_list()
        chunks = self._chunks(slots[0].llm, messages)
        self._clock += 1
        if chunks is None:  # a template the messages cannot be split by: a fresh read, as before
            slot = min(slots, key=lambda s: s.used)
            slot.llm.reset()
            slot.chain, slot.used = [], self._clock
            return slot.llm
        total = sum(len(c) for c in chunks)
        if total >= slots[0].llm.n_ctx():
            raise ValueError(f"Requested tokens ({total}) exceed context window of {slots[0].llm.n_ctx()}")
        slot = max(slots, key=lambda s: (_shared(s.chain, chunks), -s.used))
        keep = _shared(slot.chain, chunks)
        if keep == 0 and slot.chain and len(slots) < self._count:  # keep what they hold: another context
            slot = Slot(self._load(len(slots)))
            slots.append(slot)
        kept = sum(len(c) for c in chunks[:keep])
        llm = slot.llm
        if keep == 0:
            llm.reset()
        llm.n_tokens = kept  # eval() drops what the context held beyond
        for chunk in chunks[keep:]:
            llm.eval(chunk)
        self.reused_tokens += kept
        self.read_tokens += total - kept
        slot.chain, slot.used = chunks, self._clock
        return llm

    def _chunks(self, llm: Any, messages: list[dict[str, str]]) -> list[tuple[int, ...]] | None:
        """The tokens of each message but the last, as the template renders and llama-cpp-python
        tokenizes them (None when the template is not the GGUF's own, or a rendering of fewer
        messages is not a prefix of the whole: then the split cannot be trusted)."""
        if llm.chat_format != TEMPLATE_FORMAT:
            return None
        if self._formatter is None:
            self._formatter = _formatter(llm)
        full = _tokens(llm, self._formatter(messages=messages).prompt)
        chunks: list[tuple[int, ...]] = []
        start = 0
        for k in range(1, len(messages)):
            prefix = _tokens(llm, self._formatter(messages=messages[:k], add_generation_prompt=False).prompt)
            if full[: len(prefix)] != prefix or len(prefix) <= start:
                return None
            chunks.append(tuple(prefix[start:]))
            start = len(prefix)
        return chunks


def _shared(chain: list[tuple[int, ...]], chunks: list[tuple[int, ...]]) -> int:
    n = 0
    for held, wanted in zip(chain, chunks, strict=False):
        if held != wanted:
            break
        n += 1
    return n


def _tokens(llm: Any, prompt: str) -> list[int]:
    # As llama-cpp-python's template handler tokenizes (the template adds the special tokens).
    return list(llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))


def _formatter(llm: Any) -> Any:
    """The GGUF's chat template, built as llama-cpp-python builds it for chat_template.default."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    eos, bos = llm.token_eos(), llm.token_bos()
    template = Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
        bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
    )

    def render(*, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> Any:
        template.add_generation_prompt = add_generation_prompt
        return template(messages=messages)  # type: ignore[arg-type]  # plain role/content dicts

    return render
