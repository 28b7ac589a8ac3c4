"""python src/doctor.py <overrides> (alias: src/run.py stage=doctor): is this machine ready to run
the experiment they compose? Versions, API keys (present or not, never their values), the MLflow
store, the embedded model, disk space. Prints a table with the fix for each problem; a problem that
would stop a run makes the command exit 2."""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from omegaconf import DictConfig

from chareval.config import AppConfig
from chareval.errors import CharevalError
from chareval.llm import registry
from chareval.remote.keys import api_key, load_env_file
from chareval.stages.backends import BACKENDS
from chareval.store.runs import resolve_uri, use_store
from chareval.validation import validate_config

PACKAGES = ("hydra-core", "mlflow", "anthropic", "openai", "together", "llama-cpp-python", "streamlit", "torch")
LOW_DISK_BYTES, NO_DISK_BYTES = 2 * 1024**3, 200 * 1024**2


@dataclass
class Check:
    name: str
    status: Literal["ok", "warn", "BLOCKS"]
    detail: str
    fix: str = ""


def versions() -> list[Check]:
    found = []
    for package in PACKAGES:
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{package} (not installed)")
    return [Check("versions", "ok", f"python {platform.python_version()}; " + ", ".join(found))]


def keys(settings: AppConfig) -> list[Check]:
    """Each hosted API's key: present or not (never its value), and whether this config needs it."""
    needs = {f"models.{role}": model for role, model in settings.models.roles().items()}
    needs |= {f"judge {judge}": judge for judge in settings.judges()}
    used = set(registry.providers_used(settings.models, needs))
    used.add(f"{settings.finetune.backend} fine-tuning")
    users: dict[str, list[str]] = {}
    for name, spec in sorted(registry.load_all().items()):
        if spec.endpoint.key_env:
            users.setdefault(spec.endpoint.key_env, []).append(name)
    for name, backend in sorted(BACKENDS.items()):
        if backend.endpoint and backend.endpoint.key_env:
            users.setdefault(backend.endpoint.key_env, []).append(f"{name} fine-tuning")
    checks = []
    for env, names in sorted(users.items()):
        needed_by = [name for name in names if name in used]
        if api_key(env):
            checks.append(Check(f"key {env}", "ok", "set"))
        elif needed_by:
            fix = "export it or put it in .env at the project root (git ignores .env)"
            checks.append(Check(f"key {env}", "BLOCKS", f"not set; this config uses {', '.join(needed_by)}", fix))
        else:
            checks.append(Check(f"key {env}", "ok", f"not set (needed only for {', '.join(names)})"))
    return checks


def store(settings: AppConfig) -> Check:
    if not settings.tracking.enabled:
        return Check("MLflow store", "ok", "tracking.enabled=false: nothing is logged")
    uri = resolve_uri(settings.tracking.uri, settings.paths.root)
    try:
        use_store(uri, settings.tracking.experiment)  # reachable, writable, tables current
    except CharevalError as e:
        return Check("MLflow store", "BLOCKS", e.message, e.fix or "")
    return Check("MLflow store", "ok", f"{uri} (experiment '{settings.tracking.experiment}')")


def embedded_model(settings: AppConfig) -> Check:
    """The first local model of the config loads and answers a short request."""
    from chareval.llm import ChatMessage, LLMClient, LLMRequest

    local = [model for model in settings.models.roles().values() if model.startswith("local/")]
    if not local:
        return Check("embedded model", "ok", "not used by this config")
    started = time.perf_counter()
    request = LLMRequest(
        model=local[0], system="You are helpful.", messages=[ChatMessage(role="user", content="Hi")], max_tokens=8
    )
    try:
        reply = LLMClient(settings.models, cache=None).provider(local[0]).complete(request)
    except CharevalError as e:
        return Check("embedded model", "BLOCKS", e.message, e.fix or "")
    took = time.perf_counter() - started
    return Check(
        "embedded model", "ok", f"{local[0]} loaded and answered ({len(reply.text)} characters) in {took:.1f} s"
    )


def disk(settings: AppConfig) -> Check:
    folder = Path(settings.paths.outputs)
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    detail = f"{free / 1024**3:.1f} GB free under {folder}"
    if free < NO_DISK_BYTES:
        return Check("disk", "BLOCKS", detail, "free space: outputs, the cache and the MLflow store grow with each run")
    if free < LOW_DISK_BYTES:
        return Check("disk", "warn", detail, "a fine-tune or a big sweep may not fit")
    return Check("disk", "ok", detail)


def run(cfg: DictConfig) -> int:
    """Print the checks; 2 when one would stop a run, else 0."""
    checks = versions()
    try:
        settings = validate_config(cfg)
    except CharevalError as e:
        checks.append(Check("config", "BLOCKS", e.message, e.fix or ""))
        settings = None
    if settings is not None:
        load_env_file(settings.paths.root)
        checks.append(Check("config", "ok", f"models={settings.models.name}, persona={settings.persona.name}"))
        steps: list[Callable[[AppConfig], list[Check] | Check]] = [keys, store, embedded_model, disk]
        for step in steps:
            result = step(settings)
            checks += result if isinstance(result, list) else [result]
    print(table(checks))
    return 2 if any(c.status == "BLOCKS" for c in checks) else 0


def main(args: list[str]) -> int:
    """The command: the same overrides as src/run.py (models=seed, persona=...), checked as it checks
    them; Hydra's own flags (hydra.run.dir=...) mean nothing here and are ignored."""
    from chareval.cli import check_group_options, check_override_keys
    from chareval.config.compose import CONF, compose

    ours = [a for a in args if not a.lstrip("+~").startswith("hydra.") and a != "stage=doctor"]
    try:
        check_override_keys(ours, CONF)
        check_group_options(ours, CONF)
        cfg = compose(ours)
    except CharevalError as e:
        print(f"error: {e}")
        return 2
    return run(cfg)


def table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  status  detail", f"{'-' * width}  ------  ------"]
    for c in checks:
        lines.append(f"{c.name:<{width}}  {c.status:<6}  {c.detail}")
        if c.fix:
            lines.append(f"{'':<{width}}          fix: {c.fix}")
    return "\n".join(lines)
