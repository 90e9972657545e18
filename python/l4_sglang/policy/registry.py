"""The one table of policies, built from each class's NAME, and config loading.

`POLICIES` feeds a CLI's `choices=` and `make_policy`; `policy_config_fields`
gives what a CLI needs to build `--<prefix>-<field>` flags (type, default,
help, and a parser from text). Unknown names and keys raise ValueError; they
never fall back to a default policy.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from l4_sglang.core import CostModel
from l4_sglang.policy.base import Policy
from l4_sglang.policy.l4 import L4
from l4_sglang.policy.least_load import LeastLoad
from l4_sglang.policy.llumnix import Llumnix
from l4_sglang.policy.power_of_two import PowerOfTwo
from l4_sglang.policy.random import Random
from l4_sglang.policy.round_robin import RoundRobin
from l4_sglang.policy.static_buckets import StaticBuckets


def _table(classes: tuple[type[Policy], ...]) -> dict[str, type[Policy]]:
    table: dict[str, type[Policy]] = {}
    for cls in classes:
        if cls.NAME in table:
            raise RuntimeError(f"policy name {cls.NAME!r} used by {table[cls.NAME]} and {cls}")
        table[cls.NAME] = cls
    return table


POLICIES: dict[str, type[Policy]] = _table(
    (RoundRobin, Random, PowerOfTwo, LeastLoad, Llumnix, StaticBuckets, L4)
)


def policy_class(name: str) -> type[Policy]:
    try:
        return POLICIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}") from None


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class ConfigField:
    """One knob of a policy's Config."""

    name: str
    type: Any
    """bool, int, float, str or tuple[int | float | str, ...]."""
    default: Any
    help: str

    def coerce(self, value: Any) -> Any:
        """`value` as this field's type; ValueError naming the field if it is not one."""
        item = _tuple_item(self.type)
        if item is not None:
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise ValueError(
                    f"invalid {self.name}: expected a sequence of {item.__name__}, got {value!r}"
                )
            return tuple(_scalar(self.name, item, v) for v in value)
        return _scalar(self.name, self.type, value)

    def parse(self, text: str) -> Any:
        """The value a command-line string stands for (tuples are comma-separated)."""
        item = _tuple_item(self.type)
        if item is not None:
            parts = [p.strip() for p in text.split(",") if p.strip()]
            return tuple(_parse_scalar(self.name, item, p) for p in parts)
        return _parse_scalar(self.name, self.type, text)


def _tuple_item(tp: Any) -> type | None:
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
    return None


def _scalar(name: str, tp: Any, value: Any) -> Any:
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"config field {name} has an unsupported type {tp!r}")
    if not ok:
        raise ValueError(f"invalid {name}: expected {tp.__name__}, got {value!r}")
    return tp(value)


def _parse_scalar(name: str, tp: Any, text: str) -> Any:
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ValueError(f"invalid {name}: expected a boolean, got {text!r}")
    try:
        return tp(text)
    except ValueError:
        raise ValueError(f"invalid {name}: expected {tp.__name__}, got {text!r}") from None


def _fields(config_cls: type) -> tuple[ConfigField, ...]:
    hints = typing.get_type_hints(config_cls)
    return tuple(
        ConfigField(f.name, hints[f.name], f.default, f.metadata.get("help", ""))
        for f in dataclasses.fields(config_cls)
    )


def policy_config_fields(name: str) -> tuple[ConfigField, ...]:
    """The knobs of policy `name`, in declaration order."""
    return _fields(policy_class(name).Config)


def make_config(name: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """Policy `name`'s Config with `overrides` applied and validated."""
    fields = {f.name: f for f in policy_config_fields(name)}
    values = {}
    for key, value in (overrides or {}).items():
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise ValueError(f"invalid {name} config: unknown key {key!r}; known keys: {known}")
        values[key] = fields[key].coerce(value)
    return policy_class(name).Config(**values)


def make_policy(
    name: str, cost_model: CostModel, overrides: Mapping[str, Any] | None = None, seed: int = 0
) -> Policy:
    """A fresh policy `name` with its Config defaults replaced by `overrides`; per-worker cost
    models a config names (`worker_cost_models`, shipped names or JSON paths) are loaded here, so
    policies read no files."""
    config = make_config(name, overrides)
    names = config.worker_model_names() if hasattr(config, "worker_model_names") else {}
    if not names:
        return policy_class(name)(config, cost_model, seed=seed)
    loaded = {n: CostModel.load(n) for n in set(names.values())}
    models = {worker: loaded[n] for worker, n in names.items()}
    return policy_class(name)(config, cost_model, seed=seed, cost_models=models)
