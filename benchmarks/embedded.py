"""The embedded default as a laptop user meets it: `python src/run.py` (the whole pipeline on
SmolLM2-135M through llama.cpp, LoRA fine-tuning included) at its default size, in a fresh folder,
with each stage's wall time (from the MLflow store) and the peak resident memory of the process,
overall and while each stage ran (sampled every 50 ms with psutil); then the reply time of the base
model (local/...) against the fine-tuned one the run registered (local_lora/...) on the same prompt.

    .venv/bin/python benchmarks/embedded.py [--replies 5] [--transformers-replies 2] [--warm]
                                            [--json results.json] [--workdir DIR] [override ...]
                                            [--root DIR]   (another checkout's src/run.py, for a before/after)

Targets on the 2-core machines (README): the whole pipeline <= 2.5 min after set-up, peak RSS <= 3 GB,
a fine-tuned local reply <= 2x the base model's time. The first run on a machine also converts the
GGUF for transformers once (paths.cache): --warm runs the pipeline once first, untimed, so that the
figures are those of every later run; the conversion's own time is printed either way."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


class PeakSampler:
    """The resident memory of a process and its children, sampled until stopped."""

    def __init__(self, pid: int, every_s: float = 0.05):
        self.samples: list[tuple[float, int]] = []  # (time.time(), bytes)
        self._process = psutil.Process(pid)
        self._every = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                processes = [self._process, *self._process.children(recursive=True)]
                total = 0
                for p in processes:
                    try:
                        total += p.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
                self.samples.append((time.time(), total))
            except psutil.NoSuchProcess:
                return
            self._stop.wait(self._every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak_mb(self, start: float = 0.0, end: float = float("inf")) -> float:
        """The peak between start and end, counting the last sample before start: a stage shorter
        than the sampling interval (prepare) has no sample of its own on a busy machine."""
        before = [rss for t, rss in self.samples if t < start][-1:]
        inside = [rss for t, rss in self.samples if start <= t <= end]
        return round(max(before + inside, default=0) / 2**20)


def run_pipeline(root: Path, work: Path, extra: list[str]) -> dict:
    command = [
        sys.executable,
        str(root / "src" / "run.py"),
        f"hydra.run.dir={work}/run",
        f"paths.outputs={work}/outputs",
        f"tracking.uri=sqlite:///{work}/mlruns/mlflow.db",
        *extra,
    ]
    started = time.perf_counter()
    with (work / "stderr.log").open("w") as stderr:
        # MLFLOW_TRACKING_URI would beat tracking.uri: the run must log to this folder's store, not the caller's.
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlruns/mlflow.db"}
        process = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        sampler = PeakSampler(process.pid)
        code = process.wait()
        sampler.stop()
    wall = time.perf_counter() - started
    if code != 0:
        sys.exit(f"the pipeline exited {code}; see {work / 'stderr.log'}")
    return {"wall_s": round(wall, 1), "peak_rss_mb": sampler.peak_mb(), "stages": stage_walls(work, sampler)}


def stage_walls(work: Path, sampler: PeakSampler) -> dict[str, dict]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db")
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, "tags.`chareval.kind` = 'stage'", order_by=["attributes.start_time ASC"])
    stages = {}
    for run in runs:
        start, end = run.info.start_time / 1000, run.info.end_time / 1000
        stages[run.data.tags["chareval.step"]] = {
            "wall_s": round(end - start, 2),
            "peak_rss_mb": sampler.peak_mb(start, end),
        }
    return stages


def reply_times(work: Path, replies: int, transformers_replies: int, overrides: list[str]) -> dict:
    """The same request to local/<default> and to the run's local_lora/<name>, `replies` times each
    (after one untimed call that loads the model)."""
    from hydra import compose, initialize_config_dir

    from chareval.config import register_resolvers
    from chareval.llm.base import LLMRequest
    from chareval.llm.client import LLMClient
    from chareval.tuned.catalog import Catalog
    from chareval.validation import validate_config

    register_resolvers()
    registry = work / "outputs" / "registry" / "finetuned_models.jsonl"
    (record,) = Catalog(registry).all()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        settings = validate_config(
            compose(config_name="config", overrides=[f"paths.outputs={work}/outputs", *overrides])
        )
    client = LLMClient(settings.models, cache=None, registry=str(registry))
    generation = settings.models.generation["assistant"]
    request = LLMRequest(
        model=settings.models.assistant,
        system="You are Jasmine, a customer-service interviewer. Ask about the customer's last order.",
        messages=[{"role": "user", "content": "Hi. I have a few minutes, go ahead."}],
        max_tokens=generation.max_tokens,
        temperature=generation.temperature,
    )
    figures = {}
    for model in (settings.models.assistant, record.model):
        provider = client.provider(model)
        started = time.perf_counter()
        provider.complete(request.model_copy(update={"model": model, "seed": 10_000}))
        load = time.perf_counter() - started
        times, tokens = [], []
        for seed in range(replies):
            response = provider.complete(request.model_copy(update={"model": model, "seed": seed}))
            times.append(response.latency_s)
            tokens.append(response.usage.output_tokens)
        figures["local" if model.startswith("local/") else "local_lora"] = {
            "model": model,
            "runtime": getattr(provider, "runtime", "llama.cpp"),
            "first_call_s": round(load, 2),
            "median_reply_s": round(statistics.median(times), 2),
            "median_tokens": statistics.median(tokens),
            "tokens_per_s": round(sum(tokens) / sum(times), 1),
        }
    if transformers_replies:
        # The fallback runtime (and how every local_lora model was served before the GGUF adapter).
        from chareval.llm.providers.local_lora import TransformersLora

        fallback = TransformersLora(record, settings.models.providers["local"]["repeat_penalty"])
        times, tokens = [], []
        for seed in range(transformers_replies + 1):
            response = fallback.complete(request.model_copy(update={"seed": seed}))
            if seed:  # the first call loads the model
                times.append(response.latency_s)
                tokens.append(response.usage.output_tokens)
        figures["transformers"] = {
            "model": record.model,
            "runtime": "transformers",
            "median_reply_s": round(statistics.median(times), 2),
            "median_tokens": statistics.median(tokens),
            "tokens_per_s": round(sum(tokens) / sum(times), 1),
        }
    base, tuned = figures["local"], figures["local_lora"]
    figures["ratio_s_per_token"] = round(base["tokens_per_s"] / tuned["tokens_per_s"], 2)
    return figures


def conversion_s(work: Path) -> float | None:
    """How long the pipeline spent converting the GGUF for transformers (0 when it was cached)."""
    for line in (work / "stderr.log").read_text(errors="replace").splitlines():
        if "converted in" in line:
            return float(line.rsplit("converted in", 1)[1].split()[0])
    return None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replies", type=int, default=5, help="timed replies per model")
    parser.add_argument(
        "--transformers-replies", type=int, default=2, help="also time the transformers fallback (0: not)"
    )
    parser.add_argument("--warm", action="store_true", help="run the pipeline once first (conversion cached)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose src/run.py runs")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "overrides", nargs="*", help="config overrides for the pipeline (the default size when none; tests shrink it)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep the outputs and store here")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]  # the table shows as it comes
    with tempfile.TemporaryDirectory() as tmp:
        work = (args.workdir or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        # Each run starts from empty outputs (no answer cached) but for the GGUF's conversion for
        # transformers, which lives in every run's cache folder and is shared through a link, as a
        # user's later runs share it.
        runs = ["warm", "timed"] if args.warm else ["timed"]
        for name in runs:
            shutil.rmtree(work / name, ignore_errors=True)
            (work / name / "outputs" / "cache").mkdir(parents=True)
            (work / "hf_models").mkdir(exist_ok=True)
            (work / name / "outputs" / "cache" / "hf_models").symlink_to(work / "hf_models")
            results = run_pipeline(args.root.resolve(), work / name, args.overrides)
        results["conversion_s"] = conversion_s(work / "timed")
        print_pipeline(results)
        results["replies"] = (
            reply_times(work / "timed", args.replies, args.transformers_replies, args.overrides)
            if args.replies
            else None
        )
        print_replies(results["replies"])

    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


def print_pipeline(results: dict) -> None:
    print(f"\n{'stage':<16}{'wall s':>8}{'peak RSS MB':>13}")
    for stage, r in results["stages"].items():
        print(f"{stage:<16}{r['wall_s']:>8.1f}{r['peak_rss_mb']:>13}")
    print(f"{'whole command':<16}{results['wall_s']:>8.1f}{results['peak_rss_mb']:>13}")
    conversion = results["conversion_s"]
    print(
        "GGUF converted for transformers in this run: "
        + (f"{conversion:.1f} s (cached for later runs)" if conversion else "no (cached)")
    )


def print_replies(replies: dict | None) -> None:
    if replies:
        for name in ("local", "local_lora", "transformers"):
            if name in replies:
                r = replies[name]
                print(
                    f"{r['model']} ({r['runtime']}): median reply {r['median_reply_s']} s for"
                    f" {r['median_tokens']} tokens, {r['tokens_per_s']} tokens/s"
                    + (f"; first call (load) {r['first_call_s']} s" if "first_call_s" in r else "")
                )
        print(f"fine-tuned vs base, time per token: {replies['ratio_s_per_token']}x")


if __name__ == "__main__":
    main()
