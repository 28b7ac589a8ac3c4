"""How close chareval gets to what the providers' in-flight limits allow. Starts benchmarks/fake_llm.py
(loopback Anthropic- and OpenAI-compatible APIs that answer after a fixed latency) in its own process,
then runs the contexts, conversations and evaluate stages through the real stage code and the real
SDKs (`models=seed`, both providers at in-flight limit C), and prints for each stage its wall time,
the critical-path bound, their ratio, the client's CPU per call and the peak RSS; then the wall time
of a fully cached rerun of the same stages as one command (`src/run.py stage=pipeline ...`), which
must make no request, beside the time a process takes only to import MLflow and open the store
(what no command with tracking on goes under). With --rate-limit R the server refuses what is above
R requests a second (429 with retry-after) and the run reports the throughput it achieved against
R. By default it measures all of it twice, with traces on and off (tracking.traces), and prints the
ratios.

    .venv/bin/python benchmarks/throughput.py [--n 200] [--turns 5] [--concurrency 32] [--latency-ms 100]
                                               [--rate-limit R] [--traces both|on|off] [--json results.json]

The bound of a stage is the time of the calls it must make one after another before it can fan
out (the contexts' planning calls), plus max(its longest chain of dependent calls x latency, for
each provider: its other calls x latency / its limit). Targets on the 2-core machines (README):
ratio <= 1.3 for each stage, <= 3 ms of client CPU a call, a cached rerun of the whole command
under 3 s."""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from chareval.app import Job  # noqa: E402
from chareval.config import register_resolvers  # noqa: E402
from chareval.stages.contexts import angles_per_call  # noqa: E402
from chareval.store.trace_writer import flush_shared  # noqa: E402
from chareval.store.writer_registry import wait_for_ended  # noqa: E402
from startup import MLFLOW_ALONE, timed  # noqa: E402 (benchmarks/startup.py, beside this script)

# conf/evaluation/default.yaml's evaluators: one judge call each per conversation (read, not copied)
EVALUATORS = len(OmegaConf.load(ROOT / "conf" / "evaluation" / "default.yaml").evaluators)


def start_server(latency_ms: float, rate_limit: int | None) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, str(ROOT / "benchmarks" / "fake_llm.py"), "--latency-ms", str(latency_ms)]
    if rate_limit:
        command += ["--rate-limit", str(rate_limit)]
    server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    return server, server.stdout.readline().strip()


def stats(url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{url}/stats", timeout=10) as response:
        return json.load(response)


def overrides(args: argparse.Namespace, work: Path, traces: bool) -> list[str]:
    """The same settings for the in-process stages and the cached rerun's command."""
    c = args.concurrency
    return [
        "models=seed",
        f"models.providers.anthropic.max_in_flight={c}",
        f"models.providers.openrouter.max_in_flight={c}",
        f"num_contexts={args.n}",
        f"num_conversations={args.n}",
        f"turns={args.turns}",
        f"paths.outputs={work}/outputs",
        f"tracking.uri=sqlite:///{work}/mlruns/mlflow.db",
        f"tracking.traces={str(traces).lower()}",
    ]


def server_env(url: str) -> dict[str, str]:
    return {
        "ANTHROPIC_API_KEY": "benchmark-key",
        "OPENROUTER_API_KEY": "benchmark-key",
        "ANTHROPIC_BASE_URL": url,
        "OPENROUTER_BASE_URL": url,
    }


def run_stage(stage: str, extra: list[str], run_dir: Path) -> tuple[float, float, Job]:
    """Wall and CPU time of the stage's run, not of setting the job up (the first one imports MLflow).
    The job does not wait for its traces (another process writes them): see traces_after_s."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"stage={stage}", *extra])
    job = Job(cfg, stage=stage, run_dir=run_dir, choices={"stage": stage})
    cpu, wall = time.process_time(), time.perf_counter()
    job.run()
    return time.perf_counter() - wall, time.process_time() - cpu, job


def bound(chain: int, calls: dict[str, int], limit: int, latency_s: float) -> float:
    """The least time `calls` can take: the longest chain of dependent calls (a conversation's
    turns), or each provider's calls spread over its slots, whichever is longer."""
    return max([chain * latency_s] + [n * latency_s / limit for n in calls.values()])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="contexts and conversations")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32, help="max_in_flight of both providers")
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--rate-limit", type=int, default=None, help="the server's requests a second (429 above)")
    parser.add_argument("--traces", choices=("both", "on", "off"), default="both", help="tracking.traces")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the outputs, cache and store here")
    args = parser.parse_args(argv)
    register_resolvers()
    # The SDKs are imported by the first call a process makes to each API (about 2.5 s for both):
    # once per process, reported on its own rather than charged to whichever stage comes first.
    started = time.perf_counter()
    import anthropic  # noqa: F401
    import openai  # noqa: F401

    sdk_import_s = round(time.perf_counter() - started, 2)
    # What else the stages import on first use (MLflow's tracing and prompt registry, lifelines,
    # matplotlib: seconds) goes to a small warm-up run, so that whichever mode is measured first
    # is not charged for it.
    started = time.perf_counter()
    warm_up = argparse.Namespace(**(vars(args) | {"n": 2, "turns": 1, "workdir": None}))
    measure(warm_up, traces=args.traces != "off", rerun=False)
    warm_up_s = round(time.perf_counter() - started, 2)
    modes = {"both": [True, False], "on": [True], "off": [False]}[args.traces]
    once = {"sdk_import_s": sdk_import_s, "warm_up_s": warm_up_s}
    measured = {traces: measure(args, traces) | once for traces in modes}
    for figures in measured.values():
        print_table(figures)
    # The first mode's figures at the top level; with both, the other mode's beside them, and the ratios.
    results = measured[modes[0]]
    if len(modes) == 2:
        results["traces_off"] = off = measured[False]
        results["on_vs_off"] = {
            stage: round(r["wall_s"] / off["stages"][stage]["wall_s"], 2) for stage, r in results["stages"].items()
        } | {"cached_rerun": round(results["cached_rerun"]["wall_s"] / off["cached_rerun"]["wall_s"], 2)}
        print("traces on / off, wall time: " + ", ".join(f"{k} {v:.2f}x" for k, v in results["on_vs_off"].items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


def measure(args: argparse.Namespace, traces: bool, rerun: bool = True) -> dict:
    """Every stage, then (with `rerun`) the cached rerun, against a fresh server, cache and store."""
    latency = args.latency_ms / 1000
    server, url = start_server(args.latency_ms, args.rate_limit)
    os.environ.update(server_env(url))
    results: dict = {"settings": vars(args) | {"json": None, "workdir": None, "traces": traces}, "stages": {}}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = (args.workdir.resolve() / ("traces-on" if traces else "traces-off")) if args.workdir else Path(tmp)
            common = overrides(args, work, traces)
            assistant_calls = math.ceil(args.turns / 2) * args.n
            # The seed's contexts model replies in up to 16,000 tokens: the angles are planned in
            # calls of angles_per_call(16000) one after the other, then every context at once.
            plan_calls = math.ceil(args.n / angles_per_call(16000))
            plan = {
                # stage -> (its extra overrides, its chain of dependent calls before the fan-out,
                # the calls it must make)
                "contexts": ([], plan_calls, {"anthropic": args.n + plan_calls, "openai": 0}),
                "conversations": (
                    [f"context_file={work}/contexts/contexts.json"],
                    0,
                    {"anthropic": assistant_calls, "openai": args.n * args.turns - assistant_calls},
                ),
                "evaluate": (
                    [f"input_file={work}/conversations/conversations.jsonl"],
                    0,
                    {"anthropic": EVALUATORS * args.n, "openai": 0},
                ),
            }
            for stage, (extra, before_fan_out, expected) in plan.items():
                before = stats(url)
                wall, cpu, job = run_stage(stage, common + extra, work / stage)
                # How long after the stage its traces are all in the store (the next stage is measured
                # alone: it does not share the cores with this one's writer).
                traces_after = flush_shared() if traces else 0.0
                after = stats(url)
                calls = {api: after[api] - before[api] for api in ("anthropic", "openai")}
                usage = job.log.usage
                chain = args.turns if stage == "conversations" else 1
                fan_out = calls | {"anthropic": calls["anthropic"] - before_fan_out}
                limit_bound = before_fan_out * latency + bound(chain, fan_out, args.concurrency, latency)
                results["stages"][stage] = {
                    "wall_s": round(wall, 3),
                    "bound_s": round(limit_bound, 3),
                    "ratio": round(wall / limit_bound, 2),
                    "calls": calls,
                    "expected_calls": expected,
                    "client_cpu_ms_per_call": round(1000 * cpu / max(1, sum(calls.values())), 2),
                    "retries": usage.retries,
                    "calls_failed": sum(expected.values()) - sum(calls.values()),
                    # The smallest each provider's adaptive in-flight limit went (rate limits shrink it).
                    "lowest_limit": {name: limit.lowest for name, limit in job.client.limits.items()},
                    "calls_per_s": round(sum(calls.values()) / wall, 1),
                    "traces_after_s": round(traces_after, 3),
                }
            results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            results["max_in_flight_seen"] = stats(url)["max_in_flight"]
            results["refused_429"] = stats(url)["refused"]
            if not rerun:
                return results
            before = stats(url)
            command = [
                sys.executable,
                str(ROOT / "src" / "run.py"),
                "stage=pipeline",
                "pipeline.stages=[contexts,conversations,evaluate]",
                *common,
                f"hydra.run.dir={work}/rerun",
            ]
            started = time.perf_counter()
            rerun = subprocess.run(command, env=os.environ | server_env(url), capture_output=True, text=True)
            rerun_s = time.perf_counter() - started
            results["cached_rerun"] = {
                "wall_s": round(rerun_s, 2),
                # until its traces are in the store (its writer goes on after the command exits)
                "traces_after_s": round(wait_for_ended(f"sqlite:///{work}/mlruns/mlflow.db"), 2),
                "exit": rerun.returncode,
                "requests": sum(stats(url)[api] - before[api] for api in ("anthropic", "openai")),
            }
            if rerun.returncode:
                print(rerun.stderr[-3000:], file=sys.stderr)
            # The rerun's share that is MLflow's alone (the rest is chareval's).
            store = f"sqlite:///{work}/mlruns/mlflow.db"
            results["cached_rerun"]["mlflow_open_s"] = timed([sys.executable, "-c", MLFLOW_ALONE, store], 1)
    finally:
        server.stdin.close()  # type: ignore[union-attr]
        server.wait(timeout=10)
    return results


def print_table(results: dict) -> None:
    s = results["settings"]
    print(
        f"\nN={s['n']} conversations x T={s['turns']} turns, in-flight limit {s['concurrency']}, "
        f"latency {s['latency_ms']:.0f} ms"
        + (f", rate limit {s['rate_limit']}/s" if s["rate_limit"] else "")
        + (", traces on" if s["traces"] else ", traces off")
    )
    header = ("stage", "calls", "wall s", "bound s", "ratio", "CPU ms/call", "calls/s", "retries", "traces after s")
    widths = (7, 9, 9, 7, 13, 9, 9, 16)
    print(f"{header[0]:<14}" + "".join(f"{h:>{w}}" for h, w in zip(header[1:], widths, strict=True)))
    for stage, r in results["stages"].items():
        print(
            f"{stage:<14}{sum(r['calls'].values()):>7}{r['wall_s']:>9.2f}{r['bound_s']:>9.2f}{r['ratio']:>7.2f}"
            f"{r['client_cpu_ms_per_call']:>13.2f}{r['calls_per_s']:>9.1f}{r['retries']:>9}{r['traces_after_s']:>16.2f}"
        )
    print("(traces after s: after the stage, until its traces were all in the store; not part of its wall time)")
    if s["rate_limit"]:
        for stage, r in results["stages"].items():
            print(
                f"rate limit {s['rate_limit']}/s: {stage} achieved {r['calls_per_s']} calls/s "
                f"({r['calls_per_s'] / s['rate_limit']:.0%} of it) with {r['retries']} retries, "
                f"{r['calls_failed']} calls lost; in-flight limits went down to {r['lowest_limit']}"
            )
    print(f"429 answers from the server: {results['refused_429']}")
    rerun = results["cached_rerun"]
    print(
        f"peak RSS {results['peak_rss_mb']} MB; most requests in flight at the server {results['max_in_flight_seen']}"
    )
    print(
        f"cached rerun of the whole command: {rerun['wall_s']:.2f} s, exit {rerun['exit']}, "
        f"{rerun['requests']} requests; its traces all in the store {rerun['traces_after_s']:.2f} s after it exited; "
        f"a process that only imports MLflow and opens the store: {rerun['mlflow_open_s']:.2f} s"
    )
    print(
        f"importing the anthropic and openai SDKs (once per process, before the stages): {results['sdk_import_s']} s; "
        f"a warm-up run (the stages' other first-use imports): {results['warm_up_s']} s"
    )


if __name__ == "__main__":
    main()
