"""Frozen dataclasses that read and write stored JSON exactly: the base of ``run_results``.

Stored analysis runs are append-only, so a record must read every run ever stored and write back
what it read, key for key:

* a key the stored dict lacks (an older run) reads as the field's default and stays out of
  ``to_dict`` (``absent``);
* a key this version does not model (a newer or an older run) is kept as it is (``rest``);
* a nested value is decoded by the field's codec (``nested``, ``many``, ``mapping``): an array or
  object of the wrong type reads as missing (so a reader can rely on a tuple or a dict), and a
  value that is not an object where a record is expected (a number among records) is kept as it
  is: readers check ``isinstance`` of the record class.

Hence ``Record.from_dict(d).to_dict() == d`` for any dict of JSON values. A record built in code
has no absent keys: ``to_dict`` writes every field.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Self

_MISSING = object()


class _Plain:
    """Any JSON value, as it is."""

    def decode(self, value):
        return value

    def encode(self, value):
        return value


PLAIN = _Plain()


@dataclasses.dataclass(frozen=True)
class One:
    """An object decoded as ``cls``; anything else is kept as it is."""

    cls: type[Record]

    def decode(self, value):
        return self.cls.from_dict(value) if isinstance(value, Mapping) else value

    def encode(self, value):
        return value.to_dict() if isinstance(value, Record) else value


def _element(codec, value):
    """An element of a container: decoded, or kept as it is when it is not what the codec reads."""
    decoded = codec.decode(value)
    return value if decoded is _MISSING else decoded


@dataclasses.dataclass(frozen=True)
class ListOf:
    """A JSON array as a tuple of decoded items."""

    item: Any = PLAIN

    def decode(self, value):
        if value is None:
            return None
        if not isinstance(value, (list, tuple)):
            return _MISSING
        return tuple(_element(self.item, v) for v in value)

    def encode(self, value):
        return None if value is None else [self.item.encode(v) for v in value]


@dataclasses.dataclass(frozen=True)
class MapOf:
    """A JSON object as a dict of decoded values (keys as stored)."""

    value: Any = PLAIN

    def decode(self, value):
        if value is None:
            return None
        if not isinstance(value, Mapping):
            return _MISSING
        return {k: _element(self.value, v) for k, v in value.items()}

    def encode(self, value):
        return None if value is None else {k: self.value.encode(v) for k, v in value.items()}


def _codec(of: Any):
    """A Record class -> its codec; a codec as it is."""
    return One(of) if isinstance(of, type) and issubclass(of, Record) else of


def map_of(of: Any) -> MapOf:
    """The codec of a JSON object of ``of`` (a Record class or a codec), for mappings of mappings."""
    return MapOf(_codec(of))


def nested(cls: type[Record]):
    """A field holding one record (None when the run has none)."""
    return dataclasses.field(default=None, metadata={"codec": One(cls)})


def many(item: Any = PLAIN, *, none: bool = False):
    """A field holding a JSON array of ``item`` (a Record class or a codec), read as a tuple
    (``none``: None when the run has none, else an empty tuple)."""
    codec = ListOf(_codec(item))
    if none:
        return dataclasses.field(default=None, metadata={"codec": codec})
    return dataclasses.field(default_factory=tuple, metadata={"codec": codec})


def mapping(value: Any = PLAIN, *, none: bool = False):
    """A field holding a JSON object of ``value`` (a Record class or a codec), read as a dict
    (``none``: None when the run has none, else an empty dict)."""
    codec = MapOf(_codec(value))
    if none:
        return dataclasses.field(default=None, metadata={"codec": codec})
    return dataclasses.field(default_factory=dict, metadata={"codec": codec})


def stored_as(name: str, default: Any = None):
    """A plain field stored under another key (``class`` is a Python keyword)."""
    return dataclasses.field(default=default, metadata={"key": name})


@dataclasses.dataclass(frozen=True)
class Record:
    rest: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False, kw_only=True)
    absent: frozenset[str] = dataclasses.field(default=frozenset(), repr=False, kw_only=True)

    @classmethod
    def _data_fields(cls) -> list[tuple[dataclasses.Field, str]]:
        return [(f, f.metadata.get("key") or f.name) for f in dataclasses.fields(cls)
                if f.name not in ("rest", "absent")]

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """Read a stored dict (anything that is not an object reads as an empty one)."""
        data = data if isinstance(data, Mapping) else {}
        values, absent, keys = {}, set(), set()
        for f, name in cls._data_fields():
            keys.add(name)
            value = data.get(name, _MISSING)
            if value is not _MISSING:
                value = f.metadata.get("codec", PLAIN).decode(value)
            if value is _MISSING:
                absent.add(f.name)
            else:
                values[f.name] = value
        rest = {k: v for k, v in data.items() if k not in keys}
        return cls(**values, rest=rest, absent=frozenset(absent))

    def to_dict(self) -> dict[str, Any]:
        """The stored form: what ``from_dict`` read, or every field of a record built in code."""
        out = {name: f.metadata.get("codec", PLAIN).encode(getattr(self, f.name))
               for f, name in self._data_fields() if f.name not in self.absent}
        out.update(self.rest)
        return out
