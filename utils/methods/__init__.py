"""The methods of the suite, one file each, found by name.

>>> from utils import methods
>>> sorted(methods.names())                                      # doctest: +SKIP
['byol', 'fra', 'hncl', 'moco_v2', 'random-init', 'raw-pixels', 'supervised']
>>> methods.get("byol").Config().projector_dim                   # doctest: +SKIP
256

Every module of this package is imported on the first lookup, so a new method file registers itself.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import _REGISTRY, EncoderConfig, InputSpec, Method, config_from_dict, register

__all__ = [
    "EncoderConfig",
    "InputSpec",
    "Method",
    "config_from_dict",
    "config_from_text",
    "for_config",
    "get",
    "names",
    "parse_settings",
    "register",
]


def _discover() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")


def names() -> list[str]:
    """The registered method names."""
    _discover()
    return list(_REGISTRY)


def get(name: str) -> type[Method]:
    """The :class:`Method` subclass registered as ``name``."""
    _discover()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; the suite has {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def for_config(config) -> type[Method]:
    """The method whose config class is exactly ``type(config)``."""
    _discover()
    found = [cls for cls in _REGISTRY.values() if type(config) is cls.Config]
    if len(found) != 1:
        raise ValueError(f"no single method takes a {type(config).__name__} (found {[c.name for c in found]})")
    return found[0]


def parse_settings(items) -> dict:
    """``["lr=0.1", "space=centre", "scale=[0.2, 1]"]`` -> ``{"lr": 0.1, "space": "centre", "scale": [0.2, 1]}``:
    values that read as JSON are numbers, booleans, null or lists (Python's ``None``, ``True`` and ``False`` are
    read as JSON's); anything else is a string."""
    import json

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected field=value, not {item!r}")
        value = {"None": "null", "True": "true", "False": "false"}.get(value.strip(), value)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def config_from_text(text: str):
    """``"name"`` or ``"name:field=value,field=value"`` -> that method's config (command lines, benchmarks)."""
    name, _, settings = text.partition(":")
    cls = get(name)
    return config_from_dict(cls.Config, parse_settings(filter(None, settings.split(","))))
