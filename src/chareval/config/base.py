"""What every part of the config schema shares."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["contexts", "assistant", "user", "judge"]
ROLES: tuple[Role, ...] = get_args(Role)
MODEL_PATTERN = r"^[a-z_]+/.+$"
ModelString = Annotated[str, Field(pattern=MODEL_PATTERN, description="provider/model")]


class Strict(BaseModel):
    """A config node: unknown keys are errors. Values live in conf/ only: the schema gives types,
    bounds and cross-field rules, and no defaults beyond None for what is optional."""

    model_config = ConfigDict(extra="forbid")
