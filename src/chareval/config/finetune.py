"""finetune.*: the fine-tuning backend and its settings (conf/finetune/<file>.yaml). The composed
config checks what every backend has (FinetuneSettings); the backend's own class, which its module
in chareval/stages/backends registers, checks the rest (chareval.validation)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from chareval.config.base import ModelString, Strict


class FinetuneSettings(BaseModel):
    """What every backend's settings have; the rest is its own (extra keys wait for its class)."""

    model_config = ConfigDict(extra="allow")
    backend: str
    base_model: str
    # sft: conversations (finetune.jsonl); dpo: preference pairs (stage=repair's preferences.jsonl)
    training_method: Literal["sft", "dpo"]

    def served_base(self) -> str:
        """The base model as a chat model: the closed loop's "before"."""
        raise NotImplementedError(f"finetune={self.backend}: its settings class was not applied")

    def token_limit(self) -> int:
        """The longest example (in tokens) the backend takes whole."""
        raise NotImplementedError(f"finetune={self.backend}: its settings class was not applied")

    def cut_warning(self, longer: int, total: int, shortest: int) -> str:
        """What the backend does with the `longer` of `total` examples above token_limit()."""
        raise NotImplementedError(f"finetune={self.backend}: its settings class was not applied")


class LoraSettings(Strict):
    r: int = Field(ge=1, le=256)
    alpha: int = Field(ge=1)
    dropout: float = Field(ge=0.0, lt=1.0)
    target_modules: str | list[str]


class LocalLoraSettings(FinetuneSettings):
    model_config = ConfigDict(extra="forbid")
    backend: Literal["local_lora"]
    base_model: ModelString
    n_epochs: int = Field(ge=1, le=100)
    learning_rate: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    max_seq_tokens: int = Field(ge=64)
    gradient_checkpointing: bool
    lora: LoraSettings
    suffix: str | None = Field(max_length=40)
    device: Literal["auto", "cpu", "cuda"]
    # What the passes compute in: auto = bfloat16 where the device has it natively, else float32.
    precision: Literal["auto", "float32", "bfloat16"]
    dpo_beta: float | None = Field(gt=0)  # DPO only; null: 0.1 (TRL's default)

    @field_validator("base_model")
    @classmethod
    def _local_base(cls, value: str) -> str:
        if not value.startswith("local/"):
            raise ValueError("the local_lora backend trains a local/<alias or .gguf> model")
        return value

    def served_base(self) -> str:
        return self.base_model  # a local/ model already

    def token_limit(self) -> int:
        return self.max_seq_tokens

    def cut_warning(self, longer: int, total: int, shortest: int) -> str:
        return (
            f"{longer} of {total} examples are about {shortest} tokens or more, above finetune.max_seq_tokens="
            f"{self.max_seq_tokens}: local LoRA trains their system message and latest exchanges (earlier ones"
            " left out); raise it to train them whole"
        )


class TogetherSettings(FinetuneSettings):
    """finetune=together_qwen3_32b (conf/finetune/together_qwen3_32b.yaml)."""

    model_config = ConfigDict(extra="forbid")
    backend: Literal["together"]
    base_model: Literal["Qwen/Qwen3-32B"]  # the seed: only Qwen/Qwen3-32B is fine-tuned on Together
    base_served_as: ModelString  # the same base model through a chat endpoint: the closed loop's "before"
    n_epochs: int = Field(ge=1, le=20)
    suffix: str | None = Field(max_length=40)
    lora: bool
    learning_rate: float = Field(gt=0)
    batch_size: int | Literal["max"]
    validation_file: str | None
    n_evals: int = Field(ge=0)
    train_on_inputs: bool | Literal["auto"]  # SFT only
    dpo_beta: float | None = Field(gt=0)  # DPO only; null: Together's default
    rpo_alpha: float | None = Field(ge=0)  # DPO only: weight of the NLL term on the chosen reply
    simpo_gamma: float | None = Field(ge=0)  # DPO only: SimPO's margin (reference-free)
    context_length: int = Field(ge=512)
    wait: bool
    poll_interval_s: float = Field(gt=0)

    def served_base(self) -> str:
        return self.base_served_as

    def token_limit(self) -> int:
        return self.context_length

    def cut_warning(self, longer: int, total: int, shortest: int) -> str:
        return (
            f"{longer} of {total} examples are about {shortest} tokens or more, above the context length of"
            f" {self.base_model} on Together (finetune.context_length={self.context_length}): stage=finetune will"
            " refuse them before upload; use fewer turns or shorter documents"
        )

    @model_validator(mode="after")
    def _dpo_knobs(self) -> TogetherSettings:
        if self.training_method == "sft":
            for key in ("dpo_beta", "rpo_alpha", "simpo_gamma"):
                if getattr(self, key) is not None:
                    raise ValueError(f"finetune.{key} is a DPO setting: set finetune.training_method=dpo")
        return self
