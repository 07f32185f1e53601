"""The checking machinery under every config section: type coercion, value rules, messages.

Nothing here knows a particular field: ``schema`` and ``stages`` declare the sections, on the
``Section`` base here, and ``loading`` reads them. The bottom layer: standard library only.

Besides scalars, ``Literal`` choices and lists of sections, a field may be a list of plain
values, annotated ``tuple[X, ...]`` (``pipeline.seeds``, ``sweep.costs``): a YAML list, one
scalar (a one-item list) or comma-separated text (what the command line gives) all become a
tuple of checked items.
"""

import contextlib
import dataclasses
import difflib
import functools
import re
import types
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar, Literal, Self, Union, get_args, get_origin, get_type_hints

from ssft.errors import ConfigError

MAX_SHOWN_CHARS = 200  # an error quotes at most this much of a value, then its length


def fmt(value: Any) -> str:
    """A value as a user would write it: null, true/false, quoted strings, plain numbers;
    cut to ``MAX_SHOWN_CHARS`` characters (with the full length) so a huge value cannot
    make a huge error line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple | dict | set) and len(value) > MAX_SHOWN_CHARS:
        return f"<a {type(value).__name__} of {len(value)} items>"  # never repr() a huge one
    if isinstance(value, list | tuple):  # as YAML writes a list of values: [null, 16]
        nested = list | tuple | dict | set
        text = "[" + ", ".join(repr(v) if isinstance(v, nested) else fmt(v) for v in value) + "]"
    else:
        text = repr(value)
    if len(text) > MAX_SHOWN_CHARS:
        return f"{text[:MAX_SHOWN_CHARS]}... ({len(text)} characters)"
    return text


def key_of(cfg: "Section", name: str) -> str:
    """Dotted key of field ``name`` of a section object (top-level fields have no prefix)."""
    section = getattr(cfg, "SECTION", "")
    return f"{section}.{name}" if section else name


def invalid(key: str, value: Any, rule: str, fix: str) -> ConfigError:
    """The standard message: ``"<key>=<value>: <rule>. <fix>"``."""
    return ConfigError(f"{key}={fmt(value)}: {rule}. {fix}")


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved annotation, for a dataclass (cached: annotations never change)."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def split_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(tp, False)``."""
    if get_origin(tp) in (Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        if len(inner) == 1 and len(get_args(tp)) == 2:
            return inner[0], True
    return tp, False


def list_item(tp: Any) -> type | None:
    """``list[SomeSection]`` -> ``SomeSection``; anything else -> None."""
    args = get_args(tp)
    if get_origin(tp) is list and len(args) == 1 and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def scalar_item(tp: Any) -> Any | None:
    """``tuple[X, ...]`` (a list of plain values) -> ``X``; anything else -> None."""
    args = get_args(tp)
    if get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis:
        return args[0]
    return None


def is_str_like(tp: Any) -> bool:
    """Fields whose override values are kept as raw strings: str and Literal of strings."""
    inner, _ = split_optional(tp)
    return inner is str or (get_origin(inner) is Literal)


def type_name(tp: Any) -> str:
    """Short type for help text: ``int``, ``str | null``, ``{a|b|c}``, ``list[int]``."""
    inner, optional = split_optional(tp)
    if get_origin(inner) is Literal:
        name = "{" + "|".join(get_args(inner)) + "}"
    elif item := list_item(inner):
        name = f"list[{item.__name__}]"
    elif (item := scalar_item(inner)) is not None:
        name = f"list[{type_name(item)}]"
    else:
        name = getattr(inner, "__name__", str(inner))
    return f"{name} | null" if optional else name


# Words that mean None as an item of a list of optional values (``sweep.prefixes=none,16``);
# "all" is the sweep labels' spelling of a whole-trace prefix (ssft-n4-mean_nll-Lall).
NULL_ITEMS = ("none", "null", "~", "all")
_INT = re.compile(r"[+-]?[0-9]+")


def split_items(text: str) -> list[str]:
    """``"ssft, sft_mixed,"`` -> ``["ssft", "sft_mixed"]``: comma-separated, blanks dropped."""
    return [t.strip() for t in text.split(",") if t.strip()]


def items_example(key: str, default: tuple[Any, ...]) -> str:
    """``"pipeline.seeds=0,1 (in YAML: seeds: [0, 1])"``: how to write list ``key``."""
    text = ",".join("none" if v is None else str(v) for v in default)
    listed = ", ".join("null" if v is None else str(v) for v in default)
    return f"{key}={text} (in YAML: {key.rsplit('.', 1)[-1]}: [{listed}])"


def _parse_item(item: Any, tp: Any) -> Any:
    """A list item written as text, for a non-string item type: ``"16"`` -> 16, ``"none"``
    -> None; anything else is left for ``coerce`` to judge."""
    inner, optional = split_optional(tp)
    if not isinstance(item, str) or is_str_like(tp):
        return item
    if optional and item.strip().lower() in NULL_ITEMS:
        return None
    if inner is int and _INT.fullmatch(item.strip()):
        with contextlib.suppress(ValueError):  # past int()'s digit limit: reported as text
            return int(item)
    return item


def _coerce_items(key: str, value: Any, tp: Any, default: Any) -> tuple[Any, ...]:
    """``value`` as a tuple of items of type ``tp``: from a list, one scalar, or comma text."""
    example = items_example(key, default or ())
    if isinstance(value, str):
        items: list[Any] = split_items(value)
    elif isinstance(value, list | tuple):
        items = list(value)
    elif value is None or isinstance(value, Mapping | set):
        got = "null" if value is None else type(value).__name__
        raise ConfigError(
            f"{key}={fmt(value)}: expected a list of {type_name(tp)}, got {got}. Write e.g. "
            f"{example}."
        )
    else:
        items = [value]  # one scalar is a one-item list: pipeline.seeds=3
    out = []
    for i, item in enumerate(items, 1):
        try:
            out.append(coerce(key, _parse_item(item, tp), tp, None))
        except ConfigError:
            inner, optional = split_optional(tp)
            if get_origin(inner) is Literal:
                choices = get_args(inner)
                rule = "must be one of " + ", ".join(repr(c) for c in choices)
                close = difflib.get_close_matches(str(item), choices, n=1, cutoff=0.5)
                hint = f"Did you mean {close[0]!r}? " if close else ""
            else:
                rule = "must be " + _EXPECTED.get(inner, type_name(inner))
                rule += " or none" if optional else ""
                hint = ""
            raise ConfigError(
                f"{key}={fmt(value)}: item {i}, {fmt(item)}, is not valid: each item {rule}. "
                f"{hint}Write e.g. {example}."
            ) from None
    return tuple(out)


_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def coerce(key: str, value: Any, tp: Any, default: Any) -> Any:
    """``value`` checked against annotation ``tp``; ints become floats for float fields.

    Strings given to float fields are parsed, because PyYAML reads ``1e-5`` (no dot) as a
    string. Bools never pass as numbers, nor numbers as bools.
    """
    inner, optional = split_optional(tp)
    if value is None and optional:
        return None
    if get_origin(inner) is Literal:
        choices = get_args(inner)
        if isinstance(value, str) and value in choices:
            return value
        listed = ", ".join(repr(c) for c in choices) + (", or null" if optional else "")
        close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
        hint = f"Did you mean {key}={close[0]}?" if close else f"Set e.g. {key}={choices[0]}."
        raise ConfigError(f"{key}={fmt(value)}: must be one of {listed}. {hint}")
    if (scalar := scalar_item(inner)) is not None:
        return _coerce_items(key, value, scalar, default)
    if item := list_item(inner):
        if isinstance(value, list) and all(isinstance(v, item) for v in value):
            return value
        got = type(value).__name__
        if isinstance(value, list):
            got = "a list holding " + next(
                type(v).__name__ for v in value if not isinstance(v, item)
            )
        raise ConfigError(
            f"{key}: expected a list of {item.__name__}, got {got}. Pass {item.__name__} objects "
            "(or build the whole config with config_from_dict, which takes mappings)."
        )
    if inner is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if inner is bool:
        ok = isinstance(value, bool)
    elif inner in (int, float):
        ok = isinstance(value, (int, float) if inner is float else int)
        ok = ok and not isinstance(value, bool)
    else:
        ok = isinstance(value, inner)
    if ok:
        return float(value) if inner is float else value
    expected = _EXPECTED.get(inner, f"a {getattr(inner, '__name__', inner)}")
    expected += " or null" if optional else ""
    got = "null" if value is None else type(value).__name__
    if inner is str:
        fix = f'Quote it in YAML, e.g. {key.rsplit(".", 1)[-1]}: "{value}".'
    elif dataclasses.is_dataclass(inner):
        fix = f"Pass a {inner.__name__} (or build the whole config with config_from_dict)."
    else:
        fix = f"Set e.g. {key}={fmt(default)} (the default)."
    raise ConfigError(f"{key}={fmt(value)}: expected {expected}, got {got}. {fix}")


def check_types(cfg: "Section") -> None:
    """Coerce every field of dataclass instance ``cfg`` in place, or raise ``ConfigError``."""
    for f in dataclasses.fields(cfg):
        tp = field_types(type(cfg))[f.name]
        default = None if f.default is dataclasses.MISSING else f.default
        setattr(cfg, f.name, coerce(key_of(cfg, f.name), getattr(cfg, f.name), tp, default))


def unknown_key(key: str, source: str, known: Iterable[str]) -> ConfigError:
    """Error for an unknown dotted ``key`` from ``source``, suggesting the closest known key.

    ``known`` holds every field key and section name. Tried in order: the same field name in
    another section (``lr`` -> ``train.lr``), the closest whole key (``trian.lr``), the closest
    field name (``train.lrr``); failing those, the section's valid keys are listed.
    """
    known = list(known)
    fields_ = [k for k in known if "." in k or not any(j.startswith(k + ".") for j in known)]
    leaf = key.rsplit(".", 1)[-1]
    close = [k for k in fields_ if k.rsplit(".", 1)[-1] == leaf and k != key]
    close = close or difflib.get_close_matches(key, fields_ if "." in key else known, 1, 0.75)
    if not close:
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in fields_}
        close = [by_leaf[m] for m in difflib.get_close_matches(leaf, list(by_leaf), 1, 0.75)]
    if close:
        hint = f"Did you mean {close[0]!r}?"
    elif (section := key.split(".")[0] + ".") and any(k.startswith(section) for k in known):
        hint = "Valid keys: " + ", ".join(k for k in known if k.startswith(section)) + "."
    else:
        hint = "Run with --help to list every key."
    return ConfigError(f"unknown config key {key!r} in {source}. {hint}")


@contextlib.contextmanager
def item_errors(list_key: str, index: int) -> Iterator[None]:
    """Make ``ConfigError``s raised in the block name entry ``index`` of list ``list_key``.

    An entry's dataclass has ``SECTION = "<list_key>[i]"``, so its own messages read
    ``build.teachers[i].temperature=...``; raised in ``item_errors("build.teachers", 2)``
    they read ``build.teachers[2].temperature=...``.
    """
    try:
        yield
    except ConfigError as err:
        raise ConfigError(str(err).replace(f"{list_key}[i]", f"{list_key}[{index}]")) from None


class Section:
    """Base of the config dataclasses: validate on construction, and again on ``validate()``.

    ``SECTION`` is the dotted prefix of the subclass's keys ("" for top-level fields).
    """

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> Self:
        """Type-check every field (ints given to float fields become floats), then the rules.

        Re-run it after assigning fields by hand: assignment itself checks nothing.
        """
        check_types(self)
        self._check_values()
        return self

    def _check_values(self) -> None:
        """Per-field value rules of the subclass; raise ``invalid(...)``."""


# Value rules shared by the sections. NaN fails every comparison, so it is rejected too.


def positive(cfg: Section, *names: str) -> None:
    for name in names:
        key, value = key_of(cfg, name), getattr(cfg, name)
        if not value >= 1:
            raise invalid(key, value, "must be a positive integer", f"Set {key} >= 1.")


def non_negative(cfg: Section, *names: str) -> None:
    for name in names:
        key, value = key_of(cfg, name), getattr(cfg, name)
        if not value >= 0:
            raise invalid(key, value, "must be >= 0", f"Set {key}=0 or a positive value.")


def non_empty(cfg: Section, *names: str) -> None:
    """String fields: "" (or blank) is always a mistake; for optional ones null is the default."""
    for name in names:
        key, value = key_of(cfg, name), getattr(cfg, name)
        if value is not None and not value.strip():
            raise invalid(key, value, "must not be empty", f"Set {key} to a value, or null.")


def distinct_items(cfg: Section, name: str, *, allow_empty: bool = False) -> None:
    """A list field (``tuple[X, ...]``) must name each item once, and at least one unless
    ``allow_empty``; the fix shows the field's default."""
    key, value = key_of(cfg, name), getattr(cfg, name)
    default = next(f.default for f in dataclasses.fields(cfg) if f.name == name)
    default = () if default is dataclasses.MISSING else default
    fix = f"Write e.g. {items_example(key, default)}."
    if not value and not allow_empty:
        raise invalid(key, value, "must list at least one item", fix)
    if twice := [v for i, v in enumerate(value) if v in value[:i]]:
        raise invalid(key, value, f"must list each item once ({fmt(twice[0])} repeats)", fix)


def formats(cfg: Section, name: str, example: str, **kwargs: Any) -> None:
    """A ``str.format`` template must contain its ``{placeholder}`` and format with it alone."""
    key, value = key_of(cfg, name), getattr(cfg, name)
    (placeholder,) = kwargs
    if "{" + placeholder + "}" not in value:
        raise invalid(key, value, f"must contain {{{placeholder}}}", f"Set e.g. {key}={example!r}.")
    try:
        value.format(**kwargs)
    except (KeyError, IndexError, ValueError) as err:
        fix = "Write literal braces as {{ and }}."
        raise invalid(key, value, f"is not a valid str.format template ({err!r})", fix) from None
