"""One registry for every pluggable kind (losses, oracles, acquisition functions): a name maps to
an object, registered once with `@REGISTRY.register(name)`; an unknown name is an error that lists
the valid ones, raised when the settings that hold it load (`registered(REGISTRY)`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from pydantic import AfterValidator

T = TypeVar("T")


class UnknownName(KeyError, ValueError):
    """A name no entry has; a KeyError for mapping code and a ValueError for config validation."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Mapping[str, T], Generic[T]):
    def __init__(self, kind: str, plural: str | None = None):
        self.kind, self.plural = kind, plural or kind + "s"
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator that registers what it decorates under `name`."""

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:  # type: ignore[override]
        """The entry called `name`; an unknown name raises UnknownName listing the valid ones."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            valid = ", ".join(sorted(self._entries))
            raise UnknownName(
                f"unknown {self.kind} {name!r}; valid {self.plural}: {valid}"
            ) from None

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def registered(registry: Registry) -> AfterValidator:
    """A settings field's check that its value is a name in `registry`, so that a typo fails when
    the settings load, listing the valid names (`Annotated[str, registered(ORACLES)]`)."""

    def check(name: str) -> str:
        registry.get(name)
        return name

    return AfterValidator(check)
