"""The one way chareval is extended. Stages, flows, evaluators, model providers and fine-tuning
backends each have a Registry: every module of the registry's package declares itself (with its
settings class) by calling `register` at import, and the registry finds them by importing the
package's modules the first time it is asked. Adding one = its module (+ its YAML under conf/), and
nothing else: no list to keep, no if/else to extend. CONTRIBUTING.md has the table."""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

from chareval.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str, *, helpers: tuple[str, ...] = (), fix: str = ""):
        self.kind = kind  # "stage", "provider", ...: what an error calls an entry
        self.package = package  # where the modules that register themselves live
        self.helpers = frozenset(helpers)  # modules of that package that declare nothing (not imported here)
        self.fix = fix  # how to add or pick one, for the error on an unknown name
        self._entries: dict[str, T] = {}
        self._loaded = False
        self._lock = threading.RLock()  # a module being imported may ask again: it sees what is there

    def register(self, name: str, entry: T) -> T:
        """Called by the module that defines the entry, at import."""
        if name in self._entries and self._entries[name] is not entry:
            raise ConfigError(f"two {self.kind}s are named '{name}'", f"rename one of them ({self.package})")
        self._entries[name] = entry
        return entry

    def load(self) -> dict[str, T]:
        """Every entry, its package's modules imported once (their heavy libraries load only when used)."""
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    package = importlib.import_module(self.package)
                    for module in pkgutil.iter_modules(package.__path__):
                        if module.name not in self.helpers and not module.name.startswith("_"):
                            importlib.import_module(f"{self.package}.{module.name}")
                    self._loaded = True
        return self._entries

    def get(self, name: str) -> T:
        entries = self.load()
        if name not in entries:
            known = ", ".join(sorted(entries)) or "none"
            raise ConfigError(f"unknown {self.kind} '{name}' (known: {known})", self.fix or None)
        return entries[name]

    def names(self) -> list[str]:
        return sorted(self.load())

    def __contains__(self, name: object) -> bool:
        return name in self.load()

    def __iter__(self) -> Iterator[str]:
        return iter(self.load())

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __len__(self) -> int:
        return len(self.load())

    def items(self) -> list[tuple[str, T]]:
        return list(self.load().items())

    def values(self) -> list[T]:
        return list(self.load().values())
