"""Fields that hold a list of sections (``build.teachers``) in loading, overrides and help.

``ssft.config`` calls these; nothing here is public. Semantics:

- YAML gives the field as a list of mappings. A list replaces the one below it (preset or
  defaults) as a whole, and each entry starts from the entry dataclass's defaults; its keys are
  checked like a section's (``build.teachers[1].temprature`` -> ``temperature``).
- An override sets one field of one entry, addressed by index or by its ``name``:
  ``build.teachers.0.temperature=1.0``, ``build.teachers[0].temperature=1.0`` or
  ``build.teachers.strategy:round.error_rate=0.2``. A selector of digits is always an index
  (so entry names may not be bare numbers). Replacing the whole list needs a YAML file.
- Messages and help write an entry's keys with brackets: ``build.teachers[2].name``.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

from ssft.config.checks import ConfigError, field_types, fmt, item_errors, list_item, unknown_key
from ssft.config.schema import ExperimentConfig

# Dotted key of each list-of-sections field -> its entry dataclass ("build.teachers" -> ...).
LISTS: dict[str, type] = {
    f"{section}.{leaf}": item
    for section, cls in field_types(ExperimentConfig).items()
    if dataclasses.is_dataclass(cls)
    for leaf, tp in field_types(cls).items()
    if (item := list_item(tp))
}


def required(cls: type) -> list[str]:
    """Fields of entry dataclass ``cls`` without a default: every entry must give them."""
    missing = dataclasses.MISSING
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is missing and f.default_factory is missing
    ]


def entry_keys(list_key: str, index: int | str = "i") -> list[str]:
    """``build.teachers[i].name``, ... : one key per field of an entry."""
    return [f"{list_key}[{index}].{leaf}" for leaf in field_types(LISTS[list_key])]


def _example(list_key: str) -> str:
    return "{" + ", ".join(f"{name}: ..." for name in required(LISTS[list_key])) + "}"


def check_entries(list_key: str, value: Any, source: str) -> list[dict[str, Any]]:
    """A list of mappings (or entry dataclasses) as plain dicts; unknown keys raise."""
    cls = LISTS[list_key]
    if not isinstance(value, list):
        leaf = list_key.rsplit(".", 1)[-1]
        raise ConfigError(
            f"{list_key}={fmt(value)} in {source}: {list_key} is a list with one mapping per "
            f"entry, e.g. '{leaf}: [{_example(list_key)}]'."
        )
    entries = []
    for i, entry in enumerate(value):
        if isinstance(entry, cls):
            entry = dataclasses.asdict(entry)
        if not isinstance(entry, Mapping):
            raise ConfigError(
                f"{list_key}[{i}]={fmt(entry)} in {source}: each entry of {list_key} is a "
                f"mapping of its fields, e.g. '- {_example(list_key)}'."
            )
        for name in entry:
            if not isinstance(name, str) or name not in field_types(cls):
                raise unknown_key(f"{list_key}[{i}].{name}", source, entry_keys(list_key, i))
        entries.append(dict(entry))
    return entries


def build_entries(list_key: str, entries: list[dict[str, Any]]) -> list[Any]:
    """The entry dataclasses, each validated; messages name the entry's index."""
    cls, needed = LISTS[list_key], required(LISTS[list_key])
    built = []
    for i, entry in enumerate(entries):
        for name in needed:
            if name not in entry:
                raise ConfigError(
                    f"{list_key}[{i}].{name} is missing: every entry of {list_key} needs "
                    f"{' and '.join(needed)}. Add '{name}: ...' to {list_key}[{i}]."
                )
        with item_errors(list_key, i):
            built.append(cls(**entry))
    return built


def resolve_override(key: str, d: dict[str, Any]) -> tuple[str, dict[str, Any], str, Any] | None:
    """Where override ``key`` points inside a list of the full config dict ``d``.

    Returns (the key as messages write it, e.g. ``build.teachers[2].error_rate``; the entry's
    dict in ``d``; the field name; its annotation), or None when ``key`` is in no list.
    """
    for list_key, cls in LISTS.items():
        rest = key[len(list_key) :]
        if not key.startswith(list_key) or rest[:1] not in ("[", "."):
            continue
        if rest[0] == "[":
            selector, closed, leaf = rest[1:].partition("]")
            leaf = leaf[1:] if closed and leaf.startswith(".") else ""
        else:
            selector, _, leaf = rest[1:].rpartition(".")
        source = f"override '{key}=...'"  # never echo values here: they may be meant as secrets
        if not selector or not leaf:
            raise ConfigError(
                f"{source}: set one field of one entry of {list_key}, by index or name, e.g. "
                f"{list_key}.0.<field>=... or {list_key}.<name>.<field>=...; replace the whole "
                "list in a YAML file."
            )
        section, _, field = list_key.partition(".")
        entries = d[section][field]
        names = [entry.get("name") for entry in entries]
        listed = ", ".join(f"[{i}] {name!r}" for i, name in enumerate(names)) or "none"
        if selector.isdigit():
            index = int(selector)
            if index >= len(entries):
                raise ConfigError(
                    f"{source}: {list_key} has no entry {index}; it has {len(entries)}: "
                    f"{listed}. Use one of those indices or names."
                )
        elif selector in names:
            index = names.index(selector)
        else:
            raise ConfigError(
                f"{source}: no entry of {list_key} is named {selector!r}. Entries: {listed}. "
                f"Address one by name or index, e.g. {list_key}.0.{leaf}=..."
            )
        types = field_types(cls)
        if leaf not in types:
            raise unknown_key(f"{list_key}[{index}].{leaf}", source, entry_keys(list_key, index))
        return f"{list_key}[{index}].{leaf}", entries[index], leaf, types[leaf]
    return None
