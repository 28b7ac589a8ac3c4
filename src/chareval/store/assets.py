"""What a run was prompted with and what it ran on, in MLflow's GenAI registries: persona, user
persona, contexts instructions and rubric texts as versions in the prompt registry (a changed text
is a new version, an unchanged one reuses its version), linked to the runs that used them; the
contexts a run made or used as an evaluation dataset, named by the contexts file's hash.

Both are records *about* a run: a store that cannot keep them (an older MLflow server) gets one
warning, and the run goes on."""

from __future__ import annotations

import logging
from typing import Any

from chareval.schemas import Context
from chareval.store import names
from chareval.store.runs import StageRun, store_lock

log = logging.getLogger(__name__)


def use_prompts(run: StageRun, prompts: dict[str, tuple[str, str]]) -> dict[str, str]:
    """Register (or find) each text and link its version to the run. `prompts`: use -> (registered
    name, text), e.g. "persona" -> ("chareval.persona.jasmine", <system prompt>). Returns use ->
    "name/version" (also set as the run's prompt.<use> tags)."""
    if not run.run_id:
        return {}
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    try:
        with store_lock(mlflow.get_tracking_uri()):
            versions = {use: _version_of(client, name, text.strip()) for use, (name, text) in prompts.items()}
        _link(client, run.run_id, list(versions.values()))
    except Exception as e:  # a store without a prompt registry
        log.warning("the prompt registry of %s is not usable (%s): prompts not versioned", mlflow.get_tracking_uri(), e)
        return {}
    used = {use: f"{version.name}/{version.version}" for use, version in versions.items()}
    run.set_tags({names.PROMPT_PREFIX + use: value for use, value in used.items()})
    return used


def _version_of(client: Any, name: str, text: str) -> Any:
    """The version holding exactly `text`, registered if none does. Under the store's lock (the
    caller's): two jobs of a parallel sweep with the same new text make one version, not two."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        for version in client.search_prompt_versions(name):
            if version.template == text:
                return version
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":  # a new name: registered below
            raise
    return mlflow.genai.register_prompt(name, text, commit_message="registered by a chareval run")


def _link(client: Any, run_id: str, versions: list[Any]) -> None:
    """Link the versions to the run (the MLflow UI lists a version's runs). A store that links by
    the run's linked-prompts tag (MLflow's default: the SQL and REST stores) gets the tag written
    once for all of them, as MLflow's per-version call would leave it: that call reads the run and
    rewrites the tag for each version (a tenth of a second for a stage's rubrics). A store with a
    linking of its own, or an MLflow without these internals, gets MLflow's call per version."""
    try:
        from mlflow.store.model_registry.abstract_store import AbstractStore
        from mlflow.tracing.constant import TraceTagKey
        from mlflow.tracing.utils.prompt import update_linked_prompts_tag

        registry = client._get_registry_client().store
        by_tag = type(registry).link_prompt_version_to_run is AbstractStore.link_prompt_version_to_run
    except (ImportError, AttributeError):
        by_tag = False
    if not by_tag:
        for version in versions:
            client.link_prompt_version_to_run(run_id, version)
        return
    current = client.get_run(run_id).data.tags.get(TraceTagKey.LINKED_PROMPTS)
    updated = update_linked_prompts_tag(current, versions)
    if updated != current:
        client.set_tag(run_id, TraceTagKey.LINKED_PROMPTS, updated)


def use_contexts_dataset(run: StageRun, contexts: list[Context], sha256: str, source: str) -> str | None:
    """The evaluation dataset of these contexts (made once per distinct contexts file), logged as
    the run's input and named in its chareval.dataset tag. Returns its name."""
    if not run.run_id:
        return None
    import mlflow

    name = f"chareval-contexts-{sha256[:12]}"
    try:
        with store_lock(mlflow.get_tracking_uri()):
            found = mlflow.genai.search_datasets(filter_string=f"name = '{name}'", max_results=1)
            if found:
                dataset = found[0]
            else:
                experiment = mlflow.get_run(run.run_id).info.experiment_id
                dataset = mlflow.genai.create_dataset(
                    name=name, experiment_id=experiment, tags={"contexts_sha256": sha256, "source": source}
                )
                dataset.merge_records([_record(c) for c in contexts])
        mlflow.log_input(dataset, context="contexts")
    except Exception as e:  # a store without evaluation datasets
        log.warning("cannot record the contexts as an MLflow dataset in %s (%s)", mlflow.get_tracking_uri(), e)
        return None
    run.set_tags({names.DATASET: name})
    return name


def _record(context: Context) -> dict[str, Any]:
    """One dataset row: what a conversation starts from. No expectations: a context says what the
    user is after, not what a good answer is (the rubrics judge that)."""
    return {"inputs": context.model_dump(include={"id", "title", "scenario", "user_goal", "documents"})}
