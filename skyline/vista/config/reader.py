"""Typed reads of the raw settings namespace, each setting checked as its table entry says;
every problem is recorded, not raised, so that all of them are reported at once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from skyline.vista.config.table import Setting
from skyline.vista.problems import Problems

T = TypeVar("T")


class Reader:
    """Typed access to the raw settings namespace, recording problems."""

    def __init__(self, values: Mapping[str, Any], problems: Problems) -> None:
        self.values = values
        self.problems = problems

    def boolean(self, name: str, default: bool) -> bool:
        value = self.values.get(name, default)
        if not isinstance(value, bool):
            self.problems.bad(name, value, "True or False")
            return default
        return value

    def integer(
        self, name: str, default: int, *, minimum: int = 1, maximum: int | None = None
    ) -> int:
        value = self.values.get(name, default)
        bad = isinstance(value, bool) or not isinstance(value, int) or value < minimum
        if not bad and maximum is not None and value > maximum:
            bad = True
        if bad:
            limits = f"an integer >= {minimum}" + (
                f" and <= {maximum}" if maximum is not None else ""
            )
            self.problems.bad(name, value, limits)
            return default
        return int(value)

    def number(self, name: str, default: float, *, minimum: float = 0.001) -> float:
        value = self.values.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            self.problems.bad(name, value, f"a number >= {minimum}")
            return default
        return float(value)

    def text(self, name: str, default: str | None, *, choices: tuple[str, ...] = ()) -> str | None:
        value = self.values.get(name, default)
        if value is None or value == "":
            return default if value is None else None
        if not isinstance(value, str):
            self.problems.bad(name, value, "a string")
            return default
        if choices and value not in choices:
            self.problems.bad(name, value, " or ".join(repr(c) for c in choices))
            return default
        return value

    def port(self, name: str, default: int) -> int:
        return self.integer(name, default, minimum=1, maximum=65535)

    def read(self, setting: Setting[T]) -> T:
        """The value of ``setting``, checked as its table entry says (kind, limits, choices);
        its default when absent, None or '' (a text), or after a problem is recorded."""
        name, kind = setting.name, setting.kind
        default: Any = setting.default
        found: object
        if kind == "bool":
            found = self.boolean(name, default)
        elif kind == "int":
            minimum = 1 if setting.minimum is None else int(setting.minimum)
            maximum = None if setting.maximum is None else int(setting.maximum)
            found = self.integer(name, default, minimum=minimum, maximum=maximum)
        elif kind == "number":
            minimum_n = 0.001 if setting.minimum is None else setting.minimum
            found = self.number(name, default, minimum=minimum_n)
        elif kind == "port":  # None stands for the default only where the default is None
            absent = default is None and self.values.get(name) is None
            found = default if absent else self.port(name, default)
        elif kind in ("text", "path"):
            found = self.text(name, default, choices=setting.choices)
            found = default if found is None else found
            if kind == "path" and isinstance(found, str) and not os.path.isabs(found):
                self.problems.bad(name, found, "an absolute directory path")
        elif kind == "secret":
            value = self.values.get(name)
            found = value if value not in (None, "") else default
            if found is not None and not isinstance(found, str):
                self.problems.bad(name, "<hidden>", "a string or None")
                found = default
        else:
            raise ValueError(f"{name} has a structure of its own: read it with its own code")
        return cast(T, found)


def scheme(url: str) -> str:
    try:
        return urlsplit(url).scheme
    except ValueError:  # 'http://[::1' and the like
        return ""
