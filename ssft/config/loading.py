"""Reading a config: preset -> YAML file -> ``key=value`` overrides, and writing one back.

A run's config is built in three layers, each overriding the one before:

1. a preset (``presets``): ``base`` (the dataclass defaults) unless the YAML file has a
   top-level ``preset: <name>``;
2. the YAML file, with the same nested sections (``model:``, ``data:``, ``forking:``, ...);
3. dotted ``key=value`` overrides, e.g. ``train.lr=3e-4``; top-level fields have no dot
   (``method=random``); a key given twice is an error, as in a YAML file. Values are
   parsed as YAML, except that string fields keep the raw text (``name=007`` stays
   ``"007"``); ``null``/``none`` gives None for optional fields.

A list of plain values (``tuple[X, ...]``: ``pipeline.seeds``, ``sweep.costs``) is a YAML list
in a file (``seeds: [0, 1, 2]``) and comma-separated on the command line (``pipeline.seeds=0,1,2``,
``pipeline.seeds=3``, ``sweep.baselines=`` for none; ``[...]`` also parses); a comma string in
a file still works. A list of sections (``build.teachers``, ``pipeline.variants``) is replaced
whole by a YAML list; an override sets one field of one entry, by index or name
(``build.teachers.0.temperature=1.0``, ``build.teachers.strategy:round.error_rate=0.2``; a
selector of digits is always an index, so entry names may not be bare numbers). Messages and
help write an entry's keys with brackets: ``build.teachers[2].name``.

For example, from any entry script that calls ``parse_cli(sys.argv[1:])``::

    python workflows/<entry>.py --config workflows/configs/tiny_cpu.yaml \\
        forking.num_tags=6 matching.prefix_tokens=null train.lr=1e-3 name=tiny-n6

and ``--help`` lists every field with its type, default and meaning. Unknown keys (with the
closest valid one suggested), wrong types and invalid values raise ``ConfigError`` naming the
dotted key, the value, the rule and the fix. Every loader here also runs ``validate()``, which
requires a model to be named. Only the standard library and PyYAML are imported, so Ray
workers rebuild the config from its dict (``config_from_dict``) in milliseconds.
"""

import argparse
import dataclasses
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ssft.config.checks import (
    ConfigError,
    Section,
    field_types,
    fmt,
    is_str_like,
    item_errors,
    list_item,
    scalar_item,
    split_optional,
    type_name,
    unknown_key,
)
from ssft.config.presets import base, get_preset
from ssft.config.schema import ExperimentConfig

# Section name -> its dataclass ("model" -> ModelConfig), in declaration order.
_SECTIONS: dict[str, type[Section]] = {
    name: tp for name, tp in field_types(ExperimentConfig).items() if dataclasses.is_dataclass(tp)
}
# Dotted key of each list-of-sections field -> its entry dataclass ("build.teachers" -> ...).
_LISTS: dict[str, type[Section]] = {
    f"{section}.{leaf}": item
    for section, cls in _SECTIONS.items()
    for leaf, tp in field_types(cls).items()
    if (item := list_item(tp))
}


# --- lists of sections ---------------------------------------------------------------------


def _required(cls: type) -> list[str]:
    """Fields of entry dataclass ``cls`` without a default: every entry must give them."""
    missing = dataclasses.MISSING
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is missing and f.default_factory is missing
    ]


def _entry_keys(list_key: str, index: int | str = "i") -> list[str]:
    """``build.teachers[i].name``, ... : one key per field of an entry."""
    return [f"{list_key}[{index}].{leaf}" for leaf in field_types(_LISTS[list_key])]


def _example(list_key: str) -> str:
    return "{" + ", ".join(f"{name}: ..." for name in _required(_LISTS[list_key])) + "}"


def _check_entries(list_key: str, value: Any, source: str) -> list[dict[str, Any]]:
    """A list of mappings (or entry dataclasses) as plain dicts; unknown keys raise."""
    cls = _LISTS[list_key]
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
                raise unknown_key(f"{list_key}[{i}].{name}", source, _entry_keys(list_key, i))
        entries.append(dict(entry))
    return entries


def _build_entries(list_key: str, entries: list[dict[str, Any]]) -> list[Section]:
    """The entry dataclasses, each validated; messages name the entry's index."""
    cls, needed = _LISTS[list_key], _required(_LISTS[list_key])
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


def _resolve_override(key: str, d: dict[str, Any]) -> tuple[str, dict[str, Any], str, Any] | None:
    """Where override ``key`` points inside a list of the full config dict ``d``.

    Returns (the key as messages write it, e.g. ``build.teachers[2].error_rate``; the entry's
    dict in ``d``; the field name; its annotation), or None when ``key`` is in no list.
    """
    for list_key, cls in _LISTS.items():
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
            raise unknown_key(f"{list_key}[{index}].{leaf}", source, _entry_keys(list_key, index))
        return f"{list_key}[{index}].{leaf}", entries[index], leaf, types[leaf]
    return None


# --- the whole config: dicts, YAML, overrides, help ------------------------------------------


def _leaf_types() -> dict[str, Any]:
    """Every settable dotted key -> its annotation, in declaration order."""
    out: dict[str, Any] = {}
    for name, tp in field_types(ExperimentConfig).items():
        if name in _SECTIONS:
            out.update({f"{name}.{leaf}": t for leaf, t in field_types(tp).items()})
        else:
            out[name] = tp
    return out


def _known_keys() -> list[str]:
    return [*_leaf_types(), *(k for key in _LISTS for k in _entry_keys(key)), *_SECTIONS]


def _merge(into: dict[str, Any], update: Mapping[str, Any], source: str, prefix: str = "") -> None:
    """Deep-merge ``update`` into the full config dict ``into``; unknown keys raise."""
    for name, value in update.items():
        key = f"{prefix}{name}"
        if not isinstance(name, str) or name not in into:
            raise unknown_key(str(key), source, _known_keys())
        if key in _LISTS:
            into[name] = _check_entries(key, value, source)
        elif isinstance(into[name], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"{key}={fmt(value)} in {source}: {key} is a section, so it takes a mapping of "
                    f"its fields, e.g. '{key}: {{{next(iter(into[name]))}: ...}}'."
                )
            _merge(into[name], value, source, f"{key}.")
        else:
            into[name] = value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def config_to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """Nested plain dict (sections as sub-dicts, lists as lists, as YAML reads them);
    ``config_from_dict`` inverts it."""
    return _plain(dataclasses.asdict(cfg))


def config_from_dict(d: Mapping[str, Any], source: str = "config dict") -> ExperimentConfig:
    """Strictly build and fully validate a config from a nested dict (missing keys = defaults).

    The same checks as ``load_config``: unknown keys, types, values, cross-field rules, and a
    model must be named. Ray workers use this to rebuild the driver's config.
    """
    full = config_to_dict(ExperimentConfig())
    _merge(full, d, source)
    sections = {}
    for name, cls in _SECTIONS.items():
        values = full.pop(name)
        for leaf in values:
            if f"{name}.{leaf}" in _LISTS:
                values[leaf] = _build_entries(f"{name}.{leaf}", values[leaf])
        sections[name] = cls(**values)
    return ExperimentConfig(**full, **sections).validate()


def config_to_yaml(cfg: ExperimentConfig) -> str:
    """The whole config as YAML; ``load_config`` on it gives back an equal config."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)


def flatten_config(cfg: ExperimentConfig) -> dict[str, str | int | float | bool | None]:
    """``{"train.lr": 1e-05, "method": "ssft", ...}``: one entry per field, for MLflow params.

    Entries of a list of sections are numbered: ``build.teachers.0.name``, ...; a list of
    values is one comma-separated entry, as on the command line: ``"sweep.prefixes": "none,16"``.
    """
    flat: dict[str, str | int | float | bool | None] = {}

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict | list):  # a section, or a list of sections
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for name, v in items:
                add(f"{prefix}{name}.", v)
        elif isinstance(value, tuple):  # a list of values
            flat[prefix[:-1]] = ",".join("none" if v is None else str(v) for v in value)
        else:
            flat[prefix[:-1]] = value

    add("", dataclasses.asdict(cfg))  # asdict keeps tuples: lists of values stay apart
    return flat


def _parse_value(key: str, raw: str, tp: Any, source: str) -> Any:
    """Override text -> value: YAML, except raw text for strings and null for optionals."""
    _, optional = split_optional(tp)
    if optional and raw.strip().lower() in ("null", "none", "~"):
        return None
    if is_str_like(tp):
        return raw  # keep strings verbatim: name=007 stays "007", not the int 7
    if scalar_item(tp) is not None and not raw.lstrip().startswith("["):
        return raw  # comma-separated items (pipeline.seeds=0,1,2): the section splits them
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or "unparsable"
        msg = f"{key}={raw!r} ({source}): not a valid YAML value ({problem})"
        raise ConfigError(f"{msg}. Expected {type_name(tp)}.") from None


def _parse_override(item: str, d: dict[str, Any]) -> None:
    """Apply one ``section.field=value`` (or list entry field) override to ``d`` in place."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(
            f"override {item!r} is not key=value: write a dotted key, '=' and a value, e.g. "
            "train.lr=3e-4 or data.max_traces_per_question=null."
        )
    if key == "preset":
        raise ConfigError(
            f"override {item!r}: the preset is chosen by a top-level 'preset: <name>' line in "
            "the YAML file (it is the bottom layer), not by an override."
        )
    source = f"override {item!r}"
    if key in _SECTIONS:
        example = f"{key}.{next(iter(d[key]))}=..."
        raise ConfigError(f"{source}: {key} is a section; set one field, e.g. {example}")
    if key in _LISTS:
        raise ConfigError(
            f"override '{key}=...': {key} is a list; set one field of one entry, e.g. "
            f"{key}.0.name=... or {key}.<name>.<field>=..., or replace the list in a YAML file."
        )
    if target := _resolve_override(key, d):
        # The messages leave the value out: a mistyped field may be holding a secret.
        shown, entry, leaf, tp = target
        entry[leaf] = _parse_value(shown, raw, tp, f"override '{shown}=...'")
        return
    types = _leaf_types()
    if key not in types:
        raise unknown_key(key, source, _known_keys())
    section, _, leaf = key.rpartition(".")
    (d[section] if section else d)[leaf] = _parse_value(key, raw, types[key], source)


class _StrictYamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key written twice in one mapping, and aliases.

    PyYAML keeps the last of two equal keys silently, so a setting pasted twice (or a typo
    that lands on a real key) would override the other without a word. ``<<`` merges may
    still be overridden by explicit keys, as YAML intends. Aliases (``*name``) are refused:
    nested, a few of them expand a small file into gigabytes (an "alias bomb"), and a config
    has nothing to share that is not shorter written out.
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor} is not allowed in a config file (aliases "
                "can expand a small file without bound); write the value out", event.start_mark
            )  # fmt: skip
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} repeats line {first}; keep one", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    where = f"config file {str(path)!r}"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{where} not found (cwd-relative path).") from None
    except OSError as err:
        raise ConfigError(f"{where} cannot be read ({err.strerror or err}).") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ConfigError(
            f"{where}, line {line}: byte {err.start} is not valid UTF-8 ({err.reason}); save "
            "the file as UTF-8."
        ) from None
    try:
        loaded = yaml.load(text, Loader=_StrictYamlLoader)  # a SafeLoader: plain data only
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML: {' '.join(str(err).split())}") from None
    except RecursionError:
        raise ConfigError(f"{where} nests too deeply to be a config.") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, Mapping):
        raise ConfigError(
            f"config file {str(path)!r} must be a mapping of sections (model:, data:, ...), "
            f"got {type(loaded).__name__}."
        )
    return dict(loaded)


def _check_repeated(overrides: Sequence[str]) -> None:
    """A key given twice on the command line is an error, as it is in a YAML file: the last
    one would win silently. Values are left out of the message (they may be secrets)."""
    first: dict[str, int] = {}
    for i, item in enumerate(overrides):
        key = item.partition("=")[0].strip().replace("[", ".").replace("]", "")
        if key in first:
            raise ConfigError(
                f"override '{key}=...' is given twice (overrides {first[key] + 1} and {i + 1}); "
                "the last would silently win. Keep one."
            )
        first[key] = i


def apply_overrides(
    cfg: ExperimentConfig, overrides: Sequence[str], source: str
) -> ExperimentConfig:
    """A validated copy of ``cfg`` with ``key=value`` overrides applied (e.g. a pipeline
    variant's); errors name ``source``."""
    d = config_to_dict(cfg)
    try:
        for item in overrides:
            _parse_override(item, d)
        return config_from_dict(d)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Preset (``preset:`` in the file, else ``base``) -> YAML file -> ``key=value`` overrides.

    Returns a fully validated config; raises ``ConfigError`` on any unknown key, wrong type,
    invalid value or inconsistent combination.
    """
    file_values: dict[str, Any] = {}
    start = base
    if path is not None:
        file_values = _read_yaml(Path(path))
        if "preset" in file_values:
            preset = file_values.pop("preset")
            if not isinstance(preset, str):
                raise ConfigError(f"preset={fmt(preset)} in {str(path)!r}: must be a preset name.")
            try:
                start = get_preset(preset)
            except ConfigError as err:
                raise ConfigError(f"{err} [in config file {str(path)!r}]") from None
    d = config_to_dict(start())
    _merge(d, file_values, f"config file {str(path)!r}")
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of key=value strings, got {overrides!r}.")
    _check_repeated(overrides)
    for item in overrides:
        _parse_override(item, d)
    try:
        return config_from_dict(d)
    except ConfigError as err:
        if path is None:
            raise
        # Value rules see the merged config; say which file it came from.
        layers = f"config file {str(path)!r} (over its preset)"
        layers += f" and {len(overrides)} override(s)" if overrides else ""
        raise ConfigError(f"{err} [settings from {layers}]") from None


def config_help() -> str:
    """Every field: dotted key, type, default and help text (what ``--help`` prints).

    A list's entry fields are listed once, as ``build.teachers[i].<field>``.
    """
    wrap = textwrap.TextWrapper(width=100, initial_indent=" " * 6, subsequent_indent=" " * 6)
    lines = ["Config fields (YAML sections, or key=value overrides):"]
    defaults = config_to_dict(ExperimentConfig())

    def add(key: str, tp: Any, field: dataclasses.Field, default: str) -> None:
        lines.append(f"  {key}: {type_name(tp)}{default}")
        lines.extend(wrap.wrap(field.metadata["help"]))

    current = ""
    for key, tp in _leaf_types().items():
        section, _, leaf = key.rpartition(".")
        if section != current:
            current = section
            lines += ["", f"{section}: {_SECTIONS[section].__doc__}"]
        value = defaults[section][leaf] if section else defaults[leaf]
        fields = {f.name: f for f in dataclasses.fields(_SECTIONS.get(section, ExperimentConfig))}
        if key not in _LISTS:
            add(key, tp, fields[leaf], f" = {fmt(value)}")
            continue
        add(key, tp, fields[leaf], " = [" + ", ".join(e["name"] for e in value) + "]")
        entry_cls = _LISTS[key]
        lines.append(f"  {key}[i]: {entry_cls.__doc__}")
        for entry_key, f in zip(_entry_keys(key), dataclasses.fields(entry_cls), strict=True):
            default = " (required)" if f.default is dataclasses.MISSING else f" = {fmt(f.default)}"
            add(entry_key, field_types(entry_cls)[f.name], f, default)
    return "\n".join(lines) + "\n"


def parse_cli(argv: Sequence[str]) -> ExperimentConfig:
    """``[--config PATH] [key=value ...]`` (``argv`` without the program name).

    ``--help``/``-h`` prints ``config_help()`` and exits with status 0.
    """
    parser = argparse.ArgumentParser(
        add_help=False,
        allow_abbrev=False,
        usage="%(prog)s [--config PATH] [key=value ...]",
        description="Settings come from a preset, then the YAML file, then key=value overrides.",
    )
    parser.add_argument("--config", metavar="PATH", help="YAML config file (may name a preset).")
    parser.add_argument("-h", "--help", action="store_true", help="List every config field.")
    args, rest = parser.parse_known_args(list(argv))
    if args.help:
        print(parser.format_help())
        print(config_help(), end="")
        raise SystemExit(0)
    for item in rest:
        if item.startswith("-"):
            raise ConfigError(
                f"unknown option {item!r}: the options are --config PATH and --help; settings "
                "are key=value overrides without dashes, e.g. train.lr=3e-4."
            )
    return load_config(args.config, rest)
