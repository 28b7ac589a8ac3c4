"""Command-line checks Hydra does not make readably: `foo=1` (a key that exists nowhere) makes Hydra
print "Key 'foo' is not in struct" and exit 1; chareval names the keys that exist instead."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from chareval.config import is_secret_key
from chareval.errors import ConfigError


def top_level_keys(conf: Path) -> set[str]:
    """config.yaml's keys, the config groups, and the stage knobs a stage option brings."""
    keys = {str(k) for k in OmegaConf.load(conf / "config.yaml") if k != "defaults"}
    groups = {p.name for p in conf.iterdir() if p.is_dir()}
    knobs = {p.stem for p in (conf / "stage").glob("*.yaml")}
    return keys | groups | knobs


def check_override_keys(args: list[str], conf: Path) -> None:
    known = top_level_keys(conf)
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue  # Hydra's flags
        key = arg.split("=", 1)[0]
        if is_secret_key(key.lstrip("+~")):
            raise ConfigError(
                f"{key.lstrip('+~')} on the command line would be saved in the run folder (.hydra/overrides.yaml) "
                "and in your shell history",
                "export it in the environment or put it in .env at the project root (git ignores .env)",
            )
        if key.startswith(("+", "~")):
            continue  # an explicit addition or deletion
        top = key.split("@", 1)[0].split("/", 1)[0].split(".", 1)[0]
        if top not in known:
            raise ConfigError(
                f"unknown key '{key}' in the override {arg}",
                f"top-level keys: {', '.join(sorted(known))} (python src/run.py --cfg job shows the composed config)",
            )


# Overrides naming a folder Hydra creates before chareval runs (a failure there is Hydra's traceback).
FOLDER_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "paths.outputs")


def check_output_folders(args: list[str]) -> None:
    for arg in args:
        key, _, value = arg.partition("=")
        if key in FOLDER_KEYS and value and "${" not in value:
            try:
                Path(value).expanduser().mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(
                    f"{key}={value}: cannot create that folder ({e.strerror})", "choose a writable folder"
                ) from None
