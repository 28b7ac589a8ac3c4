"""The Together fine-tuning flow through the real `together` SDK against a local server speaking its
files and fine-tuning endpoints: check, upload, create, follow, terminal states, retries, resume."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow import MlflowClient

from chareval.errors import CharevalError, InputError
from chareval.tuned.catalog import Catalog
from fake_apis import FakeAPI, Reply

LIMITS = {
    "model_name": "Qwen/Qwen3-32B",
    "default_gradient_accumulation_steps": 1,
    "max_learning_rate": 1.0,
    "min_learning_rate": 1e-8,
    "max_num_checkpoints": 10,
    "max_num_epochs": 20,
    "max_num_evals": 100,
    "max_seq_length_dpo": 32768,
    "max_seq_length_sft": 32768,
    "merge_output_lora": False,
    "min_max_seq_length": 512,
    "supports_full_training": False,
    "supports_reasoning": True,
    "supports_tools": True,
    "supports_vision": False,
    "lora_training": {
        "default_rank": 64,
        "max_batch_size": 96,
        "max_batch_size_dpo": 48,
        "max_rank": 64,
        "min_batch_size": 8,
        "target_modules": ["all-linear"],
    },
}
GOOD = {
    "messages": [
        {"role": "system", "content": "You are Jasmine."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello, tell me about yourself?"},
    ]
}


class Together:
    """A fake Together API: one file, one job that walks through `statuses` on each retrieve."""

    def __init__(self, statuses=("queued", "running", "completed"), fail_first: dict | None = None):
        self.statuses = list(statuses)
        self.fail_first = dict(fail_first or {})  # path prefix -> status returned once
        self.retrieved = 0
        self.created = 0

    def __call__(self, seen, n):
        for prefix, status in list(self.fail_first.items()):
            if seen.path.startswith(prefix):
                del self.fail_first[prefix]
                return Reply(status, {"error": {"message": "try later"}}, headers={"retry-after": "0"})
        path, method = seen.path.split("?")[0], seen.method
        if method == "POST" and path == "/v1/files":
            return Reply(302, {}, headers={"Location": f"{self.url}/upload/file-abc", "X-Together-File-Id": "file-abc"})
        if method == "PUT" and path == "/upload/file-abc":
            return Reply(200, {})
        if method == "POST" and path == "/v1/files/file-abc/preprocess":
            return Reply(
                200,
                {
                    "id": "file-abc",
                    "bytes": 10,
                    "created_at": 0,
                    "filename": "finetune.jsonl",
                    "FileType": "jsonl",
                    "object": "file",
                    "purpose": "fine-tune",
                },
            )
        if method == "GET" and path == "/v1/fine-tunes/models/limits":
            return Reply(200, LIMITS)
        if method == "POST" and path == "/v1/fine-tunes/estimate-price":
            return Reply(200, {"estimation_available": True, "allowed_to_proceed": True, "estimated_total_price": 12.5})
        if method == "POST" and path == "/v1/fine-tunes":
            self.created += 1
            return Reply(200, self.job("pending"))
        if method == "GET" and path == "/v1/fine-tunes/ft-123":
            status = self.statuses[min(self.retrieved, len(self.statuses) - 1)]
            self.retrieved += 1
            return Reply(200, self.job(status))
        if method == "GET" and path == "/v1/fine-tunes/ft-123/events":
            events = [
                {"object": "fine-tune-event", "created_at": f"t{i}", "type": "job_start", "message": f"event {i}"}
                for i in range(self.retrieved)
            ]
            return Reply(200, {"data": events})
        return Reply(404, {"error": {"message": f"no route {method} {path}"}})

    def job(self, status):
        job = {"id": "ft-123", "status": status, "user_id": "u", "model": "Qwen/Qwen3-32B"}
        if status == "completed":
            job["model_output_name"] = "me/Qwen3-32B-customer_service_eval-ft-123"
        return job


@pytest.fixture
def train_file(tmp_path):
    path = tmp_path / "finetune.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n")
    return path


def together_job(make_job, api, monkeypatch, *overrides):
    monkeypatch.setenv("TOGETHER_API_KEY", "tok-SENTINEL-123")
    monkeypatch.setenv("TOGETHER_BASE_URL", api.url + "/v1")
    return make_job(
        "finetune",
        "finetune=together_qwen3_32b",
        "finetune.poll_interval_s=0.01",
        "models.retry.initial_backoff_s=0.01",
        "models.retry.max_backoff_s=0.01",
        *overrides,
    )


def test_upload_create_follow_to_completed_and_register(make_job, workdir, train_file, monkeypatch):
    fake = Together()
    with FakeAPI(fake) as api:
        fake.url = api.url
        job = together_job(make_job, api, monkeypatch, f"train_file={train_file}")
        outputs = job.run()
    routes = [(r.method, r.path.split("?")[0]) for r in api.requests]
    assert routes[:5] == [
        ("POST", "/v1/files"),
        ("PUT", "/upload/file-abc"),
        ("POST", "/v1/files/file-abc/preprocess"),
        ("GET", "/v1/fine-tunes/models/limits"),
        ("POST", "/v1/fine-tunes/estimate-price"),
    ]
    assert ("POST", "/v1/fine-tunes") in routes
    create = next(r.body for r in api.requests if r.path == "/v1/fine-tunes")
    assert create["model"] == "Qwen/Qwen3-32B" and create["training_file"] == "file-abc" and create["n_epochs"] == 3
    assert create["suffix"] == "customer_service_eval" and create["training_type"]["type"] == "Lora"
    assert create["training_method"]["train_on_inputs"] == "auto"
    assert fake.retrieved == 3  # queued, running, completed
    (record,) = Catalog(workdir / "outputs" / "registry" / "finetuned_models.jsonl").all()
    assert record.status == "completed" and record.model == "together/me/Qwen3-32B-customer_service_eval-ft-123"
    assert record.job_id == "ft-123" and record.file_id == "file-abc" and len(record.events) == 3
    assert json.loads(outputs["finetune_job"].read_text())["model"] == record.model
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    (run,) = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("chareval").experiment_id])
    assert run.data.tags["finetune.model"] == record.model and run.data.tags["finetune.job_id"] == "ft-123"
    assert run.data.params["finetune.base_model"] == "Qwen/Qwen3-32B"
    assert "tok-SENTINEL-123" not in json.dumps(run.data.params | run.data.tags)


@pytest.mark.parametrize("terminal", ["error", "user_error", "cancelled"])
def test_a_failed_job_fails_the_stage_after_recording_it(make_job, workdir, train_file, monkeypatch, terminal):
    fake = Together(statuses=("running", terminal))
    with FakeAPI(fake) as api:
        fake.url = api.url
        with pytest.raises(CharevalError, match=f"ended '{terminal}'"):
            together_job(make_job, api, monkeypatch, f"train_file={train_file}").run()
    (record,) = Catalog(workdir / "outputs" / "registry" / "finetuned_models.jsonl").all()
    assert record.status == terminal and record.model is None


def test_429_and_5xx_are_retried(make_job, train_file, monkeypatch):
    fake = Together(fail_first={"/v1/fine-tunes/ft-123": 503, "/v1/files": 429})
    with FakeAPI(fake) as api:
        fake.url = api.url
        together_job(make_job, api, monkeypatch, f"train_file={train_file}").run()
    assert [r.path for r in api.requests].count("/v1/files") == 2
    assert fake.created == 1


def test_rerun_finds_the_job_instead_of_creating_another(make_job, workdir, train_file, monkeypatch):
    fake = Together(statuses=("running",))
    with FakeAPI(fake) as api:
        fake.url = api.url
        together_job(make_job, api, monkeypatch, f"train_file={train_file}", "finetune.wait=false").run()
        assert fake.created == 1
        fake.statuses = ["completed"]
        together_job(make_job, api, monkeypatch, f"train_file={train_file}").run()
    assert fake.created == 1 and [r.path for r in api.requests].count("/v1/files") == 1
    (record,) = Catalog(workdir / "outputs" / "registry" / "finetuned_models.jsonl").all()
    assert record.status == "completed"


def test_job_id_picks_up_a_job_without_a_file(make_job, workdir, monkeypatch):
    fake = Together(statuses=("completed",))
    with FakeAPI(fake) as api:
        fake.url = api.url
        together_job(make_job, api, monkeypatch, "job_id=ft-123").run()
    assert fake.created == 0 and not any(r.path.startswith("/v1/files") for r in api.requests)
    (record,) = Catalog(workdir / "outputs" / "registry" / "finetuned_models.jsonl").all()
    assert record.model == "together/me/Qwen3-32B-customer_service_eval-ft-123"


def test_a_bad_file_is_rejected_before_any_upload(make_job, tmp_path, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    long = {"messages": [{"role": "user", "content": "x" * 200_000}, {"role": "assistant", "content": "ok"}]}
    bad.write_text(
        "\n".join([json.dumps(GOOD), "{oops", json.dumps({"messages": [GOOD["messages"][2]]}), json.dumps(long)]) + "\n"
    )
    with FakeAPI(Together()) as api:
        with pytest.raises(InputError) as err:
            together_job(make_job, api, monkeypatch, f"train_file={bad}").run()
    assert api.requests == []
    text = str(err.value)
    assert "1 of 4 lines valid" in text and "line 2: not valid JSON" in text
    assert "line 3: after the optional system message the first message must be 'user'" in text
    assert "line 4: about" in text and "context length (32768)" in text


def test_only_qwen3_32b_can_be_fine_tuned_on_together():
    from chareval.errors import ConfigError
    from chareval.validation import validate_config
    from conftest import compose_cfg

    with pytest.raises(ConfigError, match="finetune.base_model='meta-llama/Llama-3-8b'.*'Qwen/Qwen3-32B'"):
        validate_config(compose_cfg("finetune=together_qwen3_32b", "finetune.base_model=meta-llama/Llama-3-8b"))
    with pytest.raises(ConfigError, match="suffix"):
        validate_config(compose_cfg("finetune=together_qwen3_32b", "finetune.suffix=" + "x" * 41))


def test_another_account_or_endpoint_never_reuses_a_job_and_a_404_starts_a_new_one(
    make_job, workdir, train_file, monkeypatch, caplog
):
    from chareval.schemas import FineTunedModel
    from chareval.tuned.catalog import job_key, now

    registry = Catalog(workdir / "outputs" / "registry" / "finetuned_models.jsonl")
    fake = Together(statuses=("completed",))
    with FakeAPI(fake) as api:
        fake.url = api.url
        together_job(make_job, api, monkeypatch, f"train_file={train_file}").run()
        monkeypatch.setenv("TOGETHER_API_KEY", "tok-OTHER-ACCOUNT-456")  # another account: its own job
        job = make_job(
            "finetune",
            "finetune=together_qwen3_32b",
            "finetune.poll_interval_s=0.01",
            f"train_file={train_file}",
            run_dir=workdir / "other",
        )
        job.run()
        assert fake.created == 2
        records = registry.all()
        assert len(records) == 2 and len({r.account for r in records}) == 2
        assert not any("tok-" in json.dumps(r.model_dump()) for r in records)  # a fingerprint, never the key

        # An entry from before accounts were recorded, whose job this account does not have (404):
        # a warning, and a new job instead of a failure.
        settings = records[0].settings
        legacy = job_key(records[0].train_file_sha256, settings)
        registry.path.unlink()
        registry.save(
            records[0].model_copy(update={"key": legacy, "job_id": "ft-gone", "account": None, "updated_at": now()})
        )
        assert isinstance(registry.all()[0], FineTunedModel)
        with caplog.at_level("WARNING"):
            together_job(make_job, api, monkeypatch, f"train_file={train_file}").run()
    assert fake.created == 3 and "knows no job ft-gone" in caplog.text
    assert any(r.job_id == "ft-123" and r.account and r.status == "completed" for r in registry.all())


PAIR = {
    "input": {"messages": GOOD["messages"][:2]},
    "preferred_output": [{"role": "assistant", "content": "I respect our customers."}],
    "non_preferred_output": [{"role": "assistant", "content": "Customers are the worst."}],
}


def test_dpo_uploads_preference_pairs_and_creates_a_dpo_job(make_job, workdir, tmp_path, monkeypatch):
    pairs = tmp_path / "preferences.jsonl"
    pairs.write_text(json.dumps(PAIR) + "\n" + json.dumps(PAIR) + "\n")
    fake = Together(statuses=("completed",))
    with FakeAPI(fake) as api:
        fake.url = api.url
        together_job(
            make_job, api, monkeypatch, f"train_file={pairs}", "finetune.training_method=dpo", "finetune.dpo_beta=0.2"
        ).run()
    create = next(r.body for r in api.requests if r.path == "/v1/fine-tunes")
    assert create["training_method"]["method"] == "dpo" and create["training_method"]["dpo_beta"] == 0.2
    assert create["model"] == "Qwen/Qwen3-32B" and create["training_file"] == "file-abc"
    (record,) = Catalog(workdir / "outputs" / "registry" / "finetuned_models.jsonl").all()
    assert record.settings["training_method"] == "dpo" and record.status == "completed"


def test_a_preference_file_given_to_sft_or_the_reverse_names_the_file_and_the_setting(
    make_job, train_file, tmp_path, monkeypatch
):
    from chareval.errors import ConfigError
    from chareval.validation import validate_config
    from conftest import compose_cfg

    pairs = tmp_path / "preferences.jsonl"
    pairs.write_text(json.dumps(PAIR) + "\n")
    with FakeAPI(Together()) as api:
        with pytest.raises(InputError, match="holds preference pairs .* finetune.training_method=sft") as err:
            together_job(make_job, api, monkeypatch, f"train_file={pairs}").run()
        assert str(pairs) in str(err.value) and "training_method=dpo" in err.value.fix
        with pytest.raises(InputError, match="holds conversations .* finetune.training_method=dpo"):
            together_job(make_job, api, monkeypatch, f"train_file={train_file}", "finetune.training_method=dpo").run()
        assert api.requests == []  # refused before any upload
    with pytest.raises(InputError, match="holds preference pairs .* finetune=local_lora"):
        make_job("finetune", f"train_file={pairs}").run()
    with pytest.raises(ConfigError, match="finetune.dpo_beta is a DPO setting"):
        validate_config(compose_cfg("finetune=together_qwen3_32b", "finetune.dpo_beta=0.1"))
