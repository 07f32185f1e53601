"""A user's own code named in a config as ``package.module:function`` (a classifier, a
rule-based teacher), imported where it runs, with one error message for every setting."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ssft.errors import ConfigError


def is_callable_spec(spec: str) -> bool:
    """Whether ``spec`` has the form ``package.module:function`` (nothing is imported)."""
    module, sep, attr = spec.partition(":")
    return bool(sep) and all(p.isidentifier() for p in module.split(".")) and attr.isidentifier()


def load_callable(spec: str, setting: str) -> Callable[..., Any]:
    """The function ``spec`` names; ``ConfigError`` naming ``setting`` when it cannot be had."""
    if not is_callable_spec(spec):
        raise ConfigError(f"{setting}={spec!r}: expected 'package.module:function'")
    module_name, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(
            f"{setting}={spec!r}: cannot import it ({type(err).__name__}: {err}); give "
            "'package.module:function' importable on every worker (PYTHONPATH or an installed "
            "package)"
        ) from None
    if not callable(fn):
        raise ConfigError(f"{setting}={spec!r}: {attr!r} is not callable")
    return fn
