"""Command-line checks Hydra does not make readably: `foo=1` (a key that exists nowhere), `persona=bob`
(an option that does not exist) or `user_persona.prompt=x` (a key the group's files do not have)
make Hydra print its own multi-line error and exit 1; chareval says what is wrong and what exists,
in its error/fix form with exit 2, like every other config error."""

from __future__ import annotations

import functools
import re
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


# Groups whose options are picked on the command line (provider@…, retry@… and hydra/… are structure).
PICKED_GROUPS = (
    "stage",
    "persona",
    "user_persona",
    "theme",
    "models",
    "tracking",
    "evaluation",
    "finetune",
    "experiment",
)
_SWEEP_SYNTAX = re.compile(r"[()*${}\[\]]")  # choice(...), range(...), glob(*), interpolations: Hydra's to read


def _options(conf: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (conf / group).glob("*.yaml"))


@functools.cache  # read once per group: a command often has several overrides in one (models.*)
def _group_keys(conf: Path, group: str) -> frozenset[str]:
    """The keys a group's options have at their top level, and those other groups put under it
    (`provider@models.providers.local` gives models a `providers` key)."""
    keys = {str(k) for path in (conf / group).glob("*.yaml") for k in (OmegaConf.load(path) or {}) if k != "defaults"}
    defaults = OmegaConf.to_container(OmegaConf.load(conf / "config.yaml"))["defaults"]  # type: ignore[index,call-overload]
    for entry in defaults:
        target = entry if isinstance(entry, str) else next(iter(entry), "")
        package = str(target).partition("@")[2]
        if package.startswith(f"{group}."):
            keys.add(package.split(".")[1])
    return frozenset(keys)


def check_group_options(args: list[str], conf: Path) -> None:
    """`persona=bob` names an option that exists; `user_persona.prompt=x` a key the group has."""
    for arg in args:
        key, sep, value = arg.partition("=")
        added, key = key.startswith("+"), key.lstrip("+")
        if not sep or arg.startswith("-") or key.startswith("~"):
            continue
        group, _, rest = key.partition(".")
        if group not in PICKED_GROUPS:
            continue
        if not rest:
            if _SWEEP_SYNTAX.search(value):
                continue
            options = _options(conf, group)
            for option in value.split(","):  # a multirun sweeps a list of options
                if option.strip() not in options and not (group == "experiment" and option.strip() == "null"):
                    if group == "experiment" and (pair := _pairing(conf, option.strip())):
                        raise ConfigError(
                            f"there is no experiment '{option.strip()}': one experiment serves every pairing",
                            f"experiment=pairing persona={pair[0]} user_persona={pair[1]}",
                        )
                    raise ConfigError(
                        f"unknown {group} '{option.strip()}' in {arg}",
                        f"available {group} options: {', '.join(options)} (conf/{group}/<name>.yaml)",
                    )
        elif (
            not added
            and group != "experiment"
            and (sub := rest.split(".", 1)[0]) not in (known := _group_keys(conf, group))
        ):
            raise ConfigError(
                f"unknown key '{key}' in the override {arg}: {group} has no '{sub}'",
                f"{group}'s keys: {', '.join(sorted(known))} (prefix with + to add a new key on purpose)",
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


def _pairing(conf: Path, name: str) -> tuple[str, str] | None:
    """<persona>_vs_<user persona>, the name of the per-pairing experiment files that came before
    experiment=pairing, split into its two options (None when it is not such a name)."""
    persona, sep, user = name.partition("_vs_")
    if sep and persona in _options(conf, "persona") and user in _options(conf, "user_persona"):
        return persona, user
    return None
