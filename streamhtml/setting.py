"""How one setting is declared and read: a dataclass field whose metadata holds its
environment variable, its bounds or choices, its doc and the small value tests run with.
streamhtml/settings.py declares every setting with these.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .numbers import parse_bounded
from .platform_env import SettingsError


@dataclass(frozen=True)
class Setting:
    """How one environment variable is read: its bounds or choices, and what it is for."""

    env: str
    default: int | str
    doc: str
    lowest: int = 0
    highest: int = 0
    choices: tuple[str, ...] = ()
    # A directory: the value is a path, resolved (symlinks too) at start; "" leaves it unset.
    directory: bool = False
    # The value the tests run with, so every limit can be hit cheaply; None keeps the default.
    small: int | str | None = None

    def read(self, environ: Mapping[str, str]) -> Any:
        raw = environ.get(self.env)
        if raw is None or raw == "":
            return self.default
        if self.choices:
            if raw.lower() not in self.choices:
                raise SettingsError(
                    f"{self.env} must be one of {', '.join(self.choices)}; got {raw!r}"
                )
            return raw.lower()
        if self.directory:
            return _directory(self.env, raw)
        value = parse_bounded(raw.strip(), self.lowest, self.highest)
        if value is None:
            raise SettingsError(
                f"{self.env} must be a whole number from {self.lowest} to {self.highest}; "
                f"got {raw!r}"
            )
        return value

    @property
    def accepted(self) -> str:
        if self.directory:
            return "an existing directory"
        return ", ".join(self.choices) if self.choices else f"{self.lowest}–{self.highest}"


def _directory(env: str, raw: str) -> str:
    # Resolved once here, so every request checks its file against one real path, and a
    # relative value means the start directory, not Flask's package root.
    if "\x00" in raw or not os.path.isdir(raw):
        raise SettingsError(f"{env} must name an existing directory; got {raw!r}")
    return os.path.realpath(raw)


def number(env, default, lowest, highest, doc, small=None) -> Any:
    spec = Setting(env, default, doc, lowest=lowest, highest=highest, small=small)
    return field(default=default, metadata={"setting": spec})


def choice(env, default, choices, doc, small=None) -> Any:
    spec = Setting(env, default, doc, choices=choices, small=small)
    return field(default=default, metadata={"setting": spec})


def directory(env, doc) -> Any:
    spec = Setting(env, "", doc, directory=True)
    return field(default="", metadata={"setting": spec})
