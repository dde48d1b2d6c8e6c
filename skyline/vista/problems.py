"""Collects configuration mistakes so that every one of them is reported in one go."""

from __future__ import annotations

from dataclasses import dataclass, field


def show(value: object, limit: int = 80) -> str:
    """A short repr of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class Problems:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    def warn(self, where: str, message: str) -> None:
        self.warnings.append(f"{where}: {message}")

    def bad(self, where: str, value: object, expected: str) -> None:
        """The standard form: which entry/field, the bad value, what is expected."""
        self.error(where, f"got {show(value)}, expected {expected}")
