"""Fine-tuning on Together AI (the seed's step 4): check the file locally, upload it, create the LoRA
job on Qwen/Qwen3-32B, and follow it to a terminal state. Retries as for every hosted call."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chareval.config import RetrySettings, TogetherSettings
from chareval.errors import ConfigError, InputError
from chareval.finetune.data_format import check_kind, validate_file
from chareval.remote.keys import TOGETHER, api_key
from chareval.remote.retry import Failure, call_with_retries, classify_sdk_error
from chareval.schemas import JOB_FINISHED

log = logging.getLogger(__name__)


def check_before_upload(path: Path, context_length: int, training_method: str = "sft") -> None:
    """The full local check; every bad line is reported and nothing is uploaded."""
    kind = "preference" if training_method == "dpo" else "sft"
    check_kind(path, kind, f"finetune.training_method={training_method}")
    report = validate_file(path, context_length=context_length, kind=kind)
    if not report.ok:
        raise InputError(
            f"the fine-tuning file would be rejected:\n{report.describe()}",
            "fix or drop those lines (stage=prepare writes valid files)",
        )


def status_of(job: Any) -> str:
    return str(getattr(job.status, "value", job.status))


class TogetherFinetuner:
    def __init__(self, settings: TogetherSettings, retry: RetrySettings):
        from together import Together

        self.settings = settings
        self.retry = retry
        # The SDK's paths start with /v1; TOGETHER_BASE_URL is the OpenAI-style URL ending in /v1.
        url = (TOGETHER.base_url(None) or "").rstrip("/").removesuffix("/v1")
        key = api_key(TOGETHER.key_env) or ""
        self.client = Together(api_key=key, base_url=url, max_retries=0)
        # Which account and endpoint jobs belong to: a one-way hash, safe to keep in the registry.
        self.account = hashlib.sha256(f"{url}\n{key}".encode()).hexdigest()[:16]

    def _call(self, fn: Callable[[], Any]) -> Any:
        return call_with_retries(
            fn, classify=self.classify, provider="together", model=self.settings.base_model, settings=self.retry
        ).value

    def classify(self, error: Exception) -> Failure | None:
        """The together SDK's failures: connection errors and 429/5xx are retried, the rest fail with the fix."""
        import together

        return classify_sdk_error(
            error,
            together,
            url=TOGETHER.base_url(None),
            provider="together",
            model=self.settings.base_model,
            key_env=TOGETHER.key_env,
        )

    def upload(self, path: Path) -> str:
        uploaded = self._call(lambda: self.client.files.upload(file=Path(path), purpose="fine-tune", check=True))
        log.info("uploaded %s as %s", Path(path).name, uploaded.id)
        return uploaded.id

    def create(self, training_file_id: str, validation_file_id: str | None) -> Any:
        try:
            job = self._create(training_file_id, validation_file_id)
        except ValueError as e:  # the SDK checks the settings against the model's limits
            raise ConfigError(
                f"Together refused the fine-tuning settings: {e}", "adjust finetune.* (e.g. batch_size)"
            ) from None
        log.info("created fine-tuning job %s (%s)", job.id, status_of(job))
        return job

    def _create(self, training_file_id: str, validation_file_id: str | None) -> Any:
        s = self.settings
        return self._call(
            lambda: self.client.fine_tuning.create(
                training_file=training_file_id,
                model=s.base_model,
                n_epochs=s.n_epochs,
                suffix=s.suffix,
                lora=s.lora,
                learning_rate=s.learning_rate,
                batch_size=s.batch_size,
                validation_file=validation_file_id or "",
                n_evals=s.n_evals if validation_file_id else 0,
                **self._method(),
            )
        )

    def _method(self) -> dict[str, Any]:
        """SFT takes train_on_inputs; DPO takes its own knobs (the SDK refuses the other's)."""
        s = self.settings
        if s.training_method == "sft":
            return {"training_method": "sft", "train_on_inputs": s.train_on_inputs}
        knobs = {"dpo_beta": s.dpo_beta, "rpo_alpha": s.rpo_alpha, "simpo_gamma": s.simpo_gamma}
        return {"training_method": "dpo"} | {k: v for k, v in knobs.items() if v is not None}

    def follow(self, job_id: str, *, wait: bool, on_update: Callable[[Any, list[str]], None]) -> tuple[Any, list[str]]:
        """Poll the job (and its events) until a terminal state; with wait=False, look once."""
        seen: list[str] = []
        while True:
            job = self._call(lambda: self.client.fine_tuning.retrieve(job_id))
            events = self._call(lambda: self.client.fine_tuning.list_events(job_id)).data
            messages = [f"{e.created_at} {e.type}: {e.message}" for e in events]
            new, seen = messages[len(seen) :], messages
            on_update(job, new)
            if status_of(job) in JOB_FINISHED or not wait:
                return job, seen
            time.sleep(self.settings.poll_interval_s)
