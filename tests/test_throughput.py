"""Throughput: the providers' in-flight limits adapt to rate limits, latency is the model's time
only, HTTP request lines stay out of the logs, a run on the embedded model loads no hosted SDK,
and the throughput benchmark runs. Speed targets are the benchmark's figures (README), not
asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from chareval.llm import ChatMessage, LLMClient, LLMRequest
from chareval.stages.parallel import run_parallel
from chareval.validation import validate_config
from conftest import DATA, PROJECT_ROOT, compose_cfg, run_cli
from fake_apis import FakeAPI, chat_completion, openai_error

FAST_RETRY = ["models.retry.initial_backoff_s=0.01", "models.retry.max_backoff_s=0.05"]


def client_for(api: FakeAPI, *overrides: str) -> LLMClient:
    cfg = compose_cfg(
        "models=openai_compatible", f"models.providers.openai_compatible.base_url={api.url}/v1", *FAST_RETRY, *overrides
    )
    return LLMClient(validate_config(cfg).models, cache=None)


def request(seed: int) -> LLMRequest:
    return LLMRequest(
        model="openai_compatible/m",
        system="s",
        messages=[ChatMessage(role="user", content="hi")],
        max_tokens=5,
        seed=seed,
    )


def test_the_in_flight_limit_halves_on_429s_loses_no_call_and_grows_back():
    refusing = threading.Event()
    refusing.set()

    def reply(seen, n):
        # An account that allows 4 requests at once: above that, a 429 with a retry-after.
        if refusing.is_set() and api.in_flight > 4:
            return openai_error(429, "rate limited", {"retry-after-ms": "20"})
        return chat_completion(f"answer {seen.body['seed']}", "m")

    with FakeAPI(reply, delay_s=0.02) as api:
        client = client_for(api, "models.providers.openai_compatible.max_in_flight=16", "models.retry.max_attempts=30")
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(client.complete, map(request, range(120))))
        limit = client.limits["openai_compatible"]
        # No call lost: every one answered, after retries.
        assert [a.text for a in answers] == [f"answer {i}" for i in range(120)]
        assert client.meter.total().retries > 0
        assert limit.lowest <= 8  # halved at least once from 16
        refused = len(api.requests) - 120

        # The account's limit is lifted: successes grow the limit back to its ceiling.
        refusing.clear()
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(client.complete, map(request, range(120, 420))))
        assert limit.current == 16
        assert api.max_in_flight > 4
    # Far fewer 429s than calls: the limit settled near what the account allows, not a retry storm.
    assert refused < 120


def test_the_progress_bar_sums_its_figures_as_often_as_it_redraws_and_ends_on_the_last(capsys):
    # 2,000 items that finish at once: a bar redrawn (and a postfix summed) per item would cost
    # every fast stage its CPU; the last line still shows the final figures.
    handled, summed = [], []

    def postfix():
        summed.append(len(handled))
        return {"handled": len(handled)}

    run_parallel(
        lambda i: i, [(i,) for i in range(2000)], workers=4, desc="items", on_result=handled.append, postfix=postfix
    )
    assert sorted(handled) == list(range(2000))
    assert len(summed) < 200, f"the figures were summed {len(summed)} times for 2000 items"
    assert summed[-1] == 2000
    last = capsys.readouterr().err.rstrip().split("\r")[-1]
    assert "2000/2000" in last and "handled=2000" in last


def test_latency_is_the_models_time_and_the_wait_for_a_slot_is_queue_time():
    with FakeAPI(lambda seen, n: chat_completion("ok", "m"), delay_s=0.3) as api:
        client = client_for(api, "models.providers.openai_compatible.max_in_flight=1")
        client.complete(request(-1))  # the SDK's import and client, before the timed calls
        timed = []

        def call(seed):
            started = time.monotonic()
            response = client.complete(request(seed))
            timed.append((response, time.monotonic() - started))

        threads = [threading.Thread(target=call, args=(seed,)) for seed in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    (first, first_wall), (second, second_wall) = sorted(timed, key=lambda pair: pair[1])
    # One slot: the second call waited the first one's whole answer (the server takes >= 0.3 s).
    assert second.queue_s >= 0.3
    assert second.latency_s <= second_wall - 0.3  # the wait is not in the model's latency
    assert first.latency_s >= 0.3 and second.latency_s >= 0.3
    assert client.meter.queue_s >= 0.3


@pytest.mark.slow  # subprocesses: the embedded model, then the SDKs against a fake API
def test_the_embedded_model_run_loads_no_hosted_sdk_and_http_requests_are_not_logged(tmp_path):
    # src/run.py as a user runs it, reporting at exit which SDKs the process loaded.
    args = [
        "stage=conversations",
        "models=local",
        f"context_file={DATA / 'contexts.json'}",
        "num_conversations=1",
        "turns=1",
        "tracking.enabled=false",
        f"paths.outputs={tmp_path / 'outputs'}",
        f"hydra.run.dir={tmp_path / 'local'}",
    ]
    script = (
        "import atexit, runpy, sys\n"
        "atexit.register(lambda: print('LOADED', sorted(m for m in ('anthropic', 'openai', 'httpx2', 'llama_cpp') "
        "if m in sys.modules)))\n"
        f"sys.argv = ['run.py', *{args!r}]\n"
        f"runpy.run_path({str(PROJECT_ROOT / 'src' / 'run.py')!r}, run_name='__main__')\n"
    )
    local = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=PROJECT_ROOT
    )
    assert local.returncode == 0, local.stderr[-2000:]
    assert (tmp_path / "local" / "conversations.jsonl").is_file()
    assert "LOADED ['llama_cpp']" in local.stdout  # the embedded model, and no hosted SDK

    def hosted_run(folder: str, *extra: str) -> str:
        with FakeAPI(lambda seen, n: chat_completion(f"reply {n}", "m")) as api:
            done = run_cli(
                "stage=conversations",
                "models=openai_compatible",
                f"models.providers.openai_compatible.base_url={api.url}/v1",
                f"context_file={DATA / 'contexts.json'}",
                "num_conversations=2",
                "turns=2",
                "tracking.enabled=false",
                f"paths.outputs={tmp_path / 'outputs'}",
                f"hydra.run.dir={tmp_path / folder}",
                "cache=false",
                *extra,
            )
        assert done.returncode == 0, done.stderr[-2000:]
        assert len(api.requests) == 4
        return done.stderr + (tmp_path / folder / "run.log").read_text()

    assert "HTTP Request" not in hosted_run("hosted")
    # What was kept out is there when asked for (the README's debugging switch).
    assert "HTTP Request: POST" in hosted_run("verbose", "hydra.verbose=[httpx2]")


@pytest.mark.slow  # the benchmark as a user runs it: a fake API server and chareval in subprocesses
def test_the_throughput_benchmark_makes_every_call_once_and_a_cached_rerun_makes_none(tmp_path):
    out = tmp_path / "results.json"
    done = run_cli(
        "--n", "12", "--turns", "3", "--latency-ms", "20", "--json", str(out), script="benchmarks/throughput.py"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    for stage, figures in results["stages"].items():
        assert figures["calls"] == figures["expected_calls"], stage
        assert figures["bound_s"] > 0 and figures["ratio"] == pytest.approx(
            figures["wall_s"] / figures["bound_s"], 0.05
        )
    assert results["stages"]["conversations"]["calls"] == {"anthropic": 12 * 2, "openai": 12 * 1}
    assert results["cached_rerun"] == results["cached_rerun"] | {"exit": 0, "requests": 0}
    assert "cached rerun of the whole command" in done.stdout
    # beside it, what MLflow alone costs a command (imported and its store opened, in a process of its own)
    assert 0 < results["cached_rerun"]["mlflow_open_s"] < results["cached_rerun"]["wall_s"]
    # The same with traces off, and the ratios of the two
    off = results["traces_off"]
    assert off["cached_rerun"]["requests"] == 0 and off["stages"]["evaluate"]["traces_after_s"] == 0
    assert set(results["on_vs_off"]) == {"contexts", "conversations", "evaluate", "cached_rerun"}
    assert results["on_vs_off"]["evaluate"] == pytest.approx(
        results["stages"]["evaluate"]["wall_s"] / off["stages"]["evaluate"]["wall_s"], 0.05
    )
    assert "traces on / off, wall time:" in done.stdout


@pytest.mark.slow  # commands in subprocesses
def test_the_startup_benchmark_times_each_command_it_lists(tmp_path):
    out = tmp_path / "startup.json"
    done = run_cli("--repeat", "1", "--json", str(out), script="benchmarks/startup.py")
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert set(figures) >= {
        "a config error (turns=0)",
        "stage=prepare, tracking on (SQLite)",
        "importing the anthropic SDK",
    }
    assert all(seconds > 0 for seconds in figures.values())


def test_a_stage_shorter_than_the_sampling_interval_gets_the_memory_sampled_just_before_it():
    from embedded import PeakSampler  # benchmarks/, on the path from conftest

    sampler = PeakSampler(os.getpid())
    sampler.stop()
    sampler.samples = [(10.0, 200 * 2**20), (10.05, 300 * 2**20), (10.1, 250 * 2**20)]
    assert sampler.peak_mb(10.06, 10.08) == 300  # no sample inside: the one before it
    assert sampler.peak_mb(10.0, 10.1) == 300
    assert sampler.peak_mb(10.09, 10.2) == 300  # the last one before, and the one inside
    assert sampler.peak_mb(9.0, 9.5) == 0  # before the command started: nothing
