"""The hosted providers through their real SDKs against local servers speaking their wire protocol."""

from __future__ import annotations

import json

import pytest

from chareval.errors import ConfigError, ModelError
from chareval.llm import ChatMessage, LLMClient
from chareval.llm.registry import require_keys
from chareval.schemas import ContextDraft
from chareval.validation import validate_config
from conftest import compose_cfg
from fake_apis import (
    FakeAPI,
    anthropic_error,
    anthropic_overloaded_in_stream,
    anthropic_stream,
    chat_completion,
    openai_error,
)

KEY = "sk-ant-SENTINEL-do-not-log-4242"
FAST_RETRY = ["models.retry.max_attempts=2", "models.retry.initial_backoff_s=0.01", "models.retry.max_backoff_s=0.02"]
DRAFT = {"title": "T", "scenario": "S", "user_goal": "G", "documents": [{"title": "D", "content": "C"}]}


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY + "-or")


def client(*overrides: str) -> LLMClient:
    return LLMClient(validate_config(compose_cfg("models=seed", *FAST_RETRY, *overrides)).models, cache=None)


def ask(c: LLMClient, role: str = "assistant", schema=None):
    return c.ask(role, "You are Jasmine.", [ChatMessage(role="user", content="Hello")], seed=1, schema=schema)


def test_anthropic_request_has_thinking_on_and_no_temperature(keys, monkeypatch):
    with FakeAPI(lambda seen, n: anthropic_stream("Welcome!", thinking="Plan: greet.")) as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        response = ask(client())
    (seen,) = api.requests
    assert seen.path == "/v1/messages"
    # The SDK sends the key as x-api-key or as a bearer token, depending on its version.
    assert KEY in (seen.headers.get("x-api-key"), seen.headers.get("authorization", "").removeprefix("Bearer "))
    body = seen.body
    assert body["model"] == "claude-sonnet-4-20250514"
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 10000}
    assert body["max_tokens"] == 16000 > 10000
    assert "temperature" not in body and "top_k" not in body and "top_p" not in body
    assert body["stream"] is True
    assert body["system"] == "You are Jasmine." and body["messages"] == [{"role": "user", "content": "Hello"}]
    assert response.text == "Welcome!" and response.thinking == "Plan: greet."  # kept apart
    assert response.model == "anthropic/claude-sonnet-4-20250514"
    assert response.usage.input_tokens == 100 and response.usage.output_tokens == 50
    assert response.usage.cost_usd == pytest.approx((100 * 3 + 50 * 15) / 1e6)  # from the price table


def test_anthropic_structured_output_uses_one_tool_with_auto_choice(keys, monkeypatch):
    with FakeAPI(lambda seen, n: anthropic_stream(thinking="hmm", tool_input=DRAFT)) as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        response = ask(client(), role="contexts", schema=ContextDraft)
    body = api.requests[0].body
    assert body["tool_choice"] == {"type": "auto"}
    assert [t["name"] for t in body["tools"]] == ["submit_answer"]
    assert body["tools"][0]["input_schema"]["title"] == "ContextDraft"
    assert "submit_answer" in body["system"]
    assert response.parsed == ContextDraft.model_validate(DRAFT)


def test_an_invalid_tool_input_is_reasked_once_with_the_error(keys, monkeypatch):
    replies = [anthropic_stream(tool_input={"title": "only a title"}), anthropic_stream(tool_input=DRAFT)]
    with FakeAPI(lambda seen, n: replies[n]) as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        response = ask(client(), role="contexts", schema=ContextDraft)
    assert len(api.requests) == 2 and response.parsed.title == "T"
    reask = api.requests[1].body["messages"]
    assert [m["role"] for m in reask] == ["user", "assistant", "user"]
    assert "scenario" in reask[-1]["content"] and "Field required" in reask[-1]["content"]


def test_a_tool_input_cut_off_mid_json_is_reasked_not_a_crash(keys, monkeypatch):
    cut = anthropic_stream(tool_input=DRAFT)
    for event, data in cut.sse:
        if data.get("delta", {}).get("type") == "input_json_delta":
            data["delta"]["partial_json"] = data["delta"]["partial_json"][:25]  # stopped mid-string
        if event == "message_delta":
            data["delta"]["stop_reason"] = "max_tokens"
    replies = [cut, anthropic_stream(tool_input=DRAFT)]
    with FakeAPI(lambda seen, n: replies[n]) as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        response = ask(client(), role="contexts", schema=ContextDraft)
    assert len(api.requests) == 2 and response.parsed.title == "T"
    reask = api.requests[1].body["messages"]
    assert reask[1]["content"] == json.dumps(DRAFT)[:25]  # the cut-off answer, as it came
    assert "not valid JSON" in reask[-1]["content"]


@pytest.mark.parametrize(
    "overloaded",
    [
        lambda: anthropic_error(529, "overloaded_error", "Overloaded"),
        anthropic_overloaded_in_stream,
    ],
    ids=["529", "error-event-in-200-stream"],
)
def test_overloaded_anthropic_falls_back_to_openrouter_sonnet(keys, monkeypatch, overloaded):
    with (
        FakeAPI(lambda seen, n: overloaded()) as anth,
        FakeAPI(
            lambda seen, n: chat_completion("Hi from the fallback", "anthropic/claude-sonnet-4", cost=0.0021)
        ) as router,
    ):
        monkeypatch.setenv("ANTHROPIC_BASE_URL", anth.url)
        monkeypatch.setenv("OPENROUTER_BASE_URL", router.url + "/api/v1")
        response = ask(client())
    assert len(anth.requests) == 2  # the first try and its one retry (max_attempts=2)
    (seen,) = router.requests
    assert seen.path == "/api/v1/chat/completions" and seen.body["model"] == "anthropic/claude-sonnet-4"
    assert seen.headers["authorization"] == f"Bearer {KEY}-or"
    assert response.model == "openrouter/anthropic/claude-sonnet-4" and response.text == "Hi from the fallback"
    assert response.usage.fallbacks == 1 and response.usage.cost_usd == pytest.approx(0.0021)


def test_429_is_retried_after_the_retry_after_delay(keys, monkeypatch):
    replies = [anthropic_error(429, "rate_limit_error", "slow down", {"retry-after": "1"}), anthropic_stream("ok")]
    with FakeAPI(lambda seen, n: replies[n]) as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        response = ask(client("models.retry.max_attempts=3"))
    first, second = api.requests
    assert second.at - first.at >= 0.95  # honoured, not the 0.01 s backoff
    assert response.text == "ok" and response.usage.retries == 1


def test_401_fails_fast_naming_the_key_to_set(keys, monkeypatch):
    with FakeAPI(lambda seen, n: anthropic_error(401, "authentication_error", "invalid x-api-key")) as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        with pytest.raises(ModelError) as err:
            ask(client("models.retry.max_attempts=5"))
    assert len(api.requests) == 1
    assert "anthropic refused the request" in str(err.value) and "ANTHROPIC_API_KEY" in str(err.value)
    assert KEY not in str(err.value)


def test_openrouter_qwen_strips_think_blocks_and_asks_for_the_schema(keys, monkeypatch):
    replies = [
        chat_completion(
            "<think>They want agreement.</think>\nHonestly, customers are exhausting.", "qwen/qwen3-32b", cost=0.0001
        ),
        chat_completion(
            '<think>json</think>{"title":"T","scenario":"S","user_goal":"G","documents":[{"title":"D","content":"C"}]}',
            "qwen/qwen3-32b",
        ),
    ]
    with FakeAPI(lambda seen, n: replies[n]) as api:
        monkeypatch.setenv("OPENROUTER_BASE_URL", api.url + "/api/v1")
        c = client(
            "models=openai_compatible",
            "models.user=openrouter/qwen/qwen3-32b",
            "models.contexts=openrouter/qwen/qwen3-32b",
            "models.providers.openrouter.require_parameters=true",
        )
        chat = ask(c, role="user")
        structured = ask(c, role="contexts", schema=ContextDraft)
    assert chat.text == "Honestly, customers are exhausting." and chat.thinking == "They want agreement."
    assert chat.model == "openrouter/qwen/qwen3-32b" and chat.usage.cost_usd == pytest.approx(0.0001)
    plain, with_schema = api.requests[0].body, api.requests[1].body
    assert plain["model"] == "qwen/qwen3-32b" and plain["messages"][0] == {
        "role": "system",
        "content": "You are Jasmine.",
    }
    assert plain["seed"] == 1 and "response_format" not in plain and plain["usage"] == {"include": True}
    assert with_schema["response_format"]["type"] == "json_schema"
    assert with_schema["response_format"]["json_schema"]["schema"]["additionalProperties"] is False
    assert with_schema["provider"] == {"require_parameters": True}
    assert structured.parsed.title == "T"


def test_openai_compatible_server_takes_any_model(monkeypatch):
    with FakeAPI(lambda seen, n: chat_completion("hello", "my-model")) as api:
        c = LLMClient(
            validate_config(
                compose_cfg(
                    "models=openai_compatible",
                    "models.assistant=openai_compatible/my-model",
                    f"models.providers.openai_compatible.base_url={api.url}/v1",
                )
            ).models,
            cache=None,
        )
        response = ask(c)
    assert api.requests[0].path == "/v1/chat/completions" and response.model == "openai_compatible/my-model"


def test_seed_preset_refuses_a_model_outside_the_seed(keys):
    with pytest.raises(
        ConfigError,
        match="models.user=openrouter/anthropic/claude-sonnet-4 is not allowed.*allowed: openrouter/qwen/qwen3-32b",
    ):
        validate_config(compose_cfg("models=seed", "models.user=openrouter/anthropic/claude-sonnet-4"))
    with pytest.raises(ConfigError, match="requires models.fallback"):
        validate_config(compose_cfg("models=seed", "~models.fallback"))
    with pytest.raises(ConfigError, match="above the thinking budget"):
        validate_config(compose_cfg("models=seed", "models.generation.assistant.max_tokens=8000"))
    with pytest.raises(ConfigError, match="temperature must be unset"):
        validate_config(compose_cfg("models=seed", "+models.generation.assistant.temperature=0.5"))


def test_missing_keys_are_named_before_any_request(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    models = validate_config(compose_cfg("models=seed")).models
    with pytest.raises(ConfigError) as err:
        require_keys(models, {"models.assistant": models.assistant, "models.user": models.user})
    assert "ANTHROPIC_API_KEY (needed by models.assistant)" in str(err.value)
    assert "OPENROUTER_API_KEY (needed by fallback of models.assistant, models.user)" in str(err.value)
    require_keys(models, {})  # a stage that calls no model needs no key


def test_openrouter_5xx_is_retried_and_a_wrong_model_id_fails_fast(keys, monkeypatch):
    replies = [openai_error(503, "upstream busy"), chat_completion("fine", "qwen/qwen3-32b")]
    with FakeAPI(lambda seen, n: replies[n] if n < 2 else openai_error(404, "model qwen/qwen9 not found")) as api:
        monkeypatch.setenv("OPENROUTER_BASE_URL", api.url + "/api/v1")
        c = client("models=openai_compatible", "models.user=openrouter/qwen/qwen3-32b")
        response = ask(c, role="user")
        assert response.text == "fine" and response.usage.retries == 1
        wrong = client("models=openai_compatible", "models.user=openrouter/qwen/qwen9", "models.retry.max_attempts=4")
        with pytest.raises(ModelError) as err:
            ask(wrong, role="user")
    assert len(api.requests) == 3  # the 404 is not retried
    assert "check the model id 'qwen/qwen9'" in str(err.value)
