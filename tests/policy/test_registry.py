"""The registry: one table from the classes' NAMEs, strict config loading."""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest

from l4_sglang.policy import POLICIES, Policy, RequestInfo, make_config, make_policy, policy_config_fields
from l4_sglang.policy.registry import policy_class


class Err:
    """Expected failure: a ValueError whose message matches `pattern`."""

    def __init__(self, pattern: str):
        self.pattern = pattern

    def __repr__(self) -> str:
        return f"Err({self.pattern!r})"


def test_table_is_built_from_class_names():
    assert list(POLICIES) == [
        "round_robin",
        "random",
        "power_of_two",
        "least_load",
        "llumnix",
        "static_buckets",
        "l4",
    ]
    for name, cls in POLICIES.items():
        assert name == cls.NAME and issubclass(cls, Policy) and not inspect.isabstract(cls)


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_constructs_and_routes(model, name):
    policy = make_policy(name, model, seed=3)
    assert isinstance(policy, POLICIES[name])
    for w in ("a", "b", "c"):
        policy.add_worker(w, 0.0)
    assert policy.route(RequestInfo("r1", 100, 50), 0.1) in {"a", "b", "c"}
    assert policy.on_progress("r1", 5, 0.2) == []
    policy.on_finish("r1", 0.3)
    assert isinstance(policy.tick(0.4), list)


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_config_field_has_a_default_and_help(name):
    for f in dataclasses.fields(POLICIES[name].Config):
        assert f.default is not dataclasses.MISSING, f.name
        assert f.metadata.get("help"), f.name
    assert [f.name for f in policy_config_fields(name)] == [
        f.name for f in dataclasses.fields(POLICIES[name].Config)
    ]


CASES = [
    ("l4", {}, {"bins": 32, "min_gain": 0.05, "migration": True}),
    ("l4", {"bins": 16, "min_gain": 1}, {"bins": 16, "min_gain": 1.0}),
    ("l4", {"admit_by_peak": True}, {"admit_by_peak": True}),
    ("l4", {"bins": "16"}, Err(r"invalid bins: expected int, got '16'")),
    ("l4", {"bins": 16.0}, Err(r"invalid bins: expected int")),
    ("l4", {"migration": 1}, Err(r"invalid migration: expected bool")),
    ("l4", {"bins": 0}, Err(r"invalid bins: must be >= 1")),
    ("l4", {"max_utilization": 1.5}, Err(r"invalid max_utilization: must be in \(0, 1\)")),
    ("l4", {"hysteresis": -0.1}, Err(r"invalid hysteresis")),
    ("l4", {"nope": 1}, Err(r"unknown key 'nope'.*known keys: bins, max_tokens")),
    ("llumnix", {"gap_threshold": 0.5}, {"gap_threshold": 0.5}),
    ("llumnix", {"gap_threshold": -1.0}, Err(r"invalid gap_threshold")),
    ("static_buckets", {"boundaries": [100, 1000]}, {"boundaries": (100, 1000)}),
    ("static_buckets", {"boundaries": (1000, 100)}, Err(r"invalid boundaries: must be increasing")),
    ("static_buckets", {"boundaries": "100"}, Err(r"invalid boundaries: expected a sequence of int")),
    ("static_buckets", {"boundaries": [1.5]}, Err(r"invalid boundaries: expected int")),
    (
        "round_robin",
        {"candidates": 2},
        Err(r"invalid round_robin config: unknown key 'candidates'; known keys: none"),
    ),
    ("nope", {}, Err(r"unknown policy 'nope'; known: round_robin, random, .*, l4")),
    ("", {}, Err(r"unknown policy ''")),
]


@pytest.mark.parametrize(("name", "overrides", "expected"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_make_config(name, overrides, expected):
    if isinstance(expected, Err):
        with pytest.raises(ValueError, match=expected.pattern):
            make_config(name, overrides)
    else:
        config = make_config(name, overrides)
        for key, value in expected.items():
            assert getattr(config, key) == value and type(getattr(config, key)) is type(value)


def test_make_policy_raises_for_unknown_names_before_building(model):
    with pytest.raises(ValueError, match=re.escape("unknown policy 'least-load'")):
        make_policy("least-load", model)
    with pytest.raises(ValueError, match="unknown key 'bins'"):
        make_policy("least_load", model, {"bins": 8})


def test_wrong_config_type_is_rejected(model):
    with pytest.raises(ValueError, match="needs a L4Config"):
        policy_class("l4")(make_config("llumnix"), model)


@pytest.mark.parametrize(
    ("name", "field", "text", "value"),
    [
        ("l4", "bins", "16", 16),
        ("l4", "min_gain", "0.5", 0.5),
        ("l4", "migration", "false", False),
        ("l4", "prefix_affinity", "Yes", True),
        ("static_buckets", "boundaries", "100, 1000", (100, 1000)),
        ("l4", "migration", "maybe", Err("invalid migration: expected a boolean")),
        ("l4", "bins", "x", Err("invalid bins: expected int")),
    ],
)
def test_config_field_parses_command_line_text(name, field, text, value):
    (f,) = [f for f in policy_config_fields(name) if f.name == field]
    if isinstance(value, Err):
        with pytest.raises(ValueError, match=value.pattern):
            f.parse(text)
    else:
        assert f.parse(text) == value
        make_config(name, {field: f.parse(text)})
