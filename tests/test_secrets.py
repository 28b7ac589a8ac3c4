"""A server that echoes the API key in its error text (proxies and self-hosted servers do) never gets
that key written: not to a record, an artifact, the store, a span, the log or the console."""

from __future__ import annotations

import json
import logging

import pytest
from mlflow import MlflowClient

from chareval.errors import CharevalError, ModelError
from chareval.log_filters import LibraryNoiseFilter, RedactingFilter
from chareval.secrets import REDACTED, redact_text
from conftest import DATA, run_cli
from fake_apis import FakeAPI, Reply, anthropic_error, anthropic_stream, openai_error

KEY = "sk-ant-api03-SENTINEL-echoed-back-0c9f2e"
TOGETHER_KEY = "4b1f9d0c2e7a4b8c9d1e2f3a4b5c6d7e8f9a0b1c"  # no provider shape: redacted as a value read
STRANGER = "sk-or-v1-" + "a1b2c3d4" * 8  # a key nobody configured, quoted by a proxy: redacted by its shape
FAST_RETRIES = ["models.retry.max_attempts=2", "models.retry.initial_backoff_s=0.01", "models.retry.max_backoff_s=0.02"]


def echo(status: int, anthropic: bool):
    """Every request refused with `status`, the message quoting the key it was sent."""

    def reply(seen, n) -> Reply:
        sent = seen.headers.get("x-api-key") or seen.headers.get("authorization", "").removeprefix("Bearer ")
        message = f"invalid x-api-key: {sent} (upstream said: {STRANGER})"
        if anthropic:
            return anthropic_error(status, "authentication_error", message)
        return openai_error(status, message)

    return reply


def _keys_in(folder) -> list[str]:
    return [
        str(p)
        for p in folder.rglob("*")
        if p.is_file() and any(k.encode() in p.read_bytes() for k in (KEY, TOGETHER_KEY, STRANGER))
    ]


def _spans_json(store: str) -> str:
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("chareval")
    traces = client.search_traces(locations=[experiment.experiment_id]) if experiment else []
    return json.dumps([s.to_dict() for t in traces for s in client.get_trace(t.info.trace_id).data.spans])


@pytest.mark.parametrize("status", [400, 401, 500])
def test_an_echoed_key_is_redacted_on_every_provider(status, make_job, workdir, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    monkeypatch.setenv("TOGETHER_API_KEY", TOGETHER_KEY)
    messages: list[str] = []
    good = lambda seen, n: anthropic_stream("Let us keep this about the role.", thinking="hold")  # noqa: E731
    with (
        FakeAPI(echo(status, anthropic=True)) as refusing,
        FakeAPI(good) as answering,
        FakeAPI(echo(status, anthropic=False)) as router,
        FakeAPI(echo(status, anthropic=False)) as together,
    ):
        monkeypatch.setenv("OPENROUTER_BASE_URL", router.url + "/api/v1")
        monkeypatch.setenv("TOGETHER_BASE_URL", together.url + "/v1")
        runs = [
            # Anthropic refuses the contexts (and its OpenRouter fallback refuses too).
            (refusing, ["stage=contexts", "models=seed", "num_contexts=2"], "contexts"),
            # Anthropic answers as the assistant; the user simulator on OpenRouter is refused.
            (answering, ["models=seed", f"context_file={DATA / 'contexts.json'}", "turns=2"], "conversations"),
            # A fine-tuned model served by Together is refused.
            (
                answering,
                ["models=openai_compatible", "models.assistant=together/acct/ft-model", "turns=1"]
                + [f"context_file={DATA / 'contexts.json'}"],
                "conversations",
            ),
        ]
        for anthropic, overrides, stage in runs:
            monkeypatch.setenv("ANTHROPIC_BASE_URL", anthropic.url)
            args = [o for o in overrides if not o.startswith("stage=")]
            job = make_job(stage, *args, *FAST_RETRIES, run_dir=workdir / "outputs" / f"{stage}-{len(messages)}")
            with pytest.raises(CharevalError) as failed:  # above the error budget, after writing everything
                job.run()
            messages.append(str(failed.value))
        assert refusing.requests and router.requests and together.requests  # each provider was refused
    conversations = [p.read_text() for p in (workdir / "outputs").rglob("conversations.jsonl")]
    assert len(conversations) == 2 and all(REDACTED in text for text in conversations)  # the reason is kept
    assert REDACTED in (next((workdir / "outputs").rglob("contexts_errors.jsonl"))).read_text()
    assert _keys_in(workdir) == []  # records, artifacts and the SQLite store itself
    spans = _spans_json(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    assert spans and KEY not in spans and TOGETHER_KEY not in spans and STRANGER not in spans
    assert not any(k in m for m in messages for k in (KEY, TOGETHER_KEY, STRANGER))


def test_the_log_filter_redacts_messages_arguments_and_tracebacks(monkeypatch):
    monkeypatch.setenv("SOME_SERVICE_API_KEY", "plain-value-1234567")
    logger = logging.getLogger("chareval.test_secrets")
    record = logger.makeRecord(
        logger.name, logging.ERROR, __file__, 1, "server said %s", ("plain-value-1234567",), None
    )
    try:
        raise ValueError(f"echo {STRANGER}")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record)
    text = logging.Formatter().format(record)
    assert "plain-value-1234567" not in text and STRANGER not in text and text.count(REDACTED) == 2
    # Ordinary text, ids and checksums stay as they are.
    assert redact_text("conv-001 sha256 " + "ab" * 32) == "conv-001 sha256 " + "ab" * 32
    assert ModelError(f"bad key {KEY}", f"not {KEY}").one_line().count(REDACTED) == 2


@pytest.mark.slow  # a subprocess: Hydra's logging config, run.log and the console
def test_an_echoed_key_reaches_neither_the_console_nor_run_log(tmp_path):
    with FakeAPI(echo(401, anthropic=True)) as anth, FakeAPI(echo(401, anthropic=False)) as router:
        result = run_cli(
            "stage=contexts",
            "models=seed",
            "num_contexts=2",
            f"paths.outputs={tmp_path / 'outputs'}",
            f"hydra.run.dir={tmp_path / 'run'}",
            "hydra.verbose=[chareval]",
            env={
                "ANTHROPIC_API_KEY": KEY,
                "OPENROUTER_API_KEY": KEY,
                "ANTHROPIC_BASE_URL": anth.url,
                "OPENROUTER_BASE_URL": router.url + "/api/v1",
                "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
            },
        )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "authentication_error" in result.stderr and REDACTED in result.stderr
    assert KEY not in result.stdout + result.stderr and STRANGER not in result.stderr
    assert REDACTED in (tmp_path / "run" / "run.log").read_text()
    assert _keys_in(tmp_path) == []


def test_urllib3s_retries_are_left_out_and_its_other_warnings_kept_once():
    """A store going away makes urllib3 log each retry (each with other counts, so none repeats the
    last): they would push chareval's one paragraph off the screen."""
    noise = LibraryNoiseFilter()

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("urllib3.connectionpool", logging.WARNING, __file__, 1, message, None, None)

    assert not noise.filter(record("Retrying (Retry(total=1, connect=2)) after connection broken by 'reset'"))
    assert not noise.filter(record("Retrying (Retry(total=0, connect=1)) after connection broken by 'refused'"))
    assert noise.filter(record("Connection pool is full, discarding connection: 127.0.0.1"))
    assert not noise.filter(record("Connection pool is full, discarding connection: 127.0.0.1"))
