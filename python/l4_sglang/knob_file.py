"""`--policy-config FILE`: policy knobs from a JSON or TOML file, for every command line that has the
`--<policy>-<knob>` flags (`cli_help.add_policy_knobs`).

The file maps a policy name to its knobs, named as the fields of the policy's Config dataclass
(the flag without `--<policy>-`; dashes may stand for underscores):

    {"l4": {"min_gain": 0.1, "worker_cost_models": ["w0=llama3-8b-h200-flashinfer"]},
     "static_buckets": {"boundaries": [8192]}}

or, in TOML (`.toml`; anything else is read as JSON):

    [l4]
    min_gain = 0.1
    [static_buckets]
    boundaries = [8192]

A value is the field's type (a list for a tuple knob), or a string read as the flag's text would
be (`"8192,16384"`). An unknown policy or knob, a value of the wrong type, or a file that does not
read or parse is a `KnobFileError` naming the file, the key and the nearest known name.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any


class KnobFileError(ValueError):
    pass


def _did_you_mean(name: str, known: list[str]) -> str:
    from l4_sglang.cli_help import nearest

    near = nearest(name, known)
    return f" (did you mean {near!r}?)" if near else ""


def read_table(path: str | Path) -> dict[str, Any]:
    """The file's top-level table, as TOML (`.toml`) or JSON (anything else)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise KnobFileError(f"{path}: cannot read it: {e.strerror or e}") from None
    try:
        doc = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise KnobFileError(f"{path}: not valid {kind}: {e}") from None
    if not isinstance(doc, dict):
        raise KnobFileError(f"{path}: expected a table of policy names, got {type(doc).__name__}")
    return doc


def load_knob_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """{policy: {knob: value}} from the file, each value of its field's type (ConfigField.coerce, or
    ConfigField.parse for a string). Whether the knobs of a policy make a valid Config together is
    for the caller to check, once flags have been laid over them (`make_config`)."""
    from l4_sglang.policy.registry import POLICIES, policy_config_fields

    doc = read_table(path)
    out: dict[str, dict[str, Any]] = {}
    for raw_policy, section in doc.items():
        policy = raw_policy.replace("-", "_")
        if policy not in POLICIES:
            raise KnobFileError(
                f"{path}: unknown policy {raw_policy!r}{_did_you_mean(policy, list(POLICIES))}; "
                f"known: {', '.join(POLICIES)}"
            )
        if not isinstance(section, dict):
            raise KnobFileError(
                f"{path}: {raw_policy}: expected a table of knobs, got {type(section).__name__}"
            )
        fields = {f.name: f for f in policy_config_fields(policy)}
        knobs = out.setdefault(policy, {})
        for raw_key, value in section.items():
            key = raw_key.replace("-", "_")
            if key not in fields:
                known = ", ".join(fields) or "none"
                raise KnobFileError(
                    f"{path}: {raw_policy}.{raw_key}: unknown knob of {policy}"
                    f"{_did_you_mean(key, list(fields))}; known: {known}"
                )
            f = fields[key]
            try:
                text = isinstance(value, str) and f.type is not str
                knobs[key] = f.parse(value) if text else f.coerce(value)
            except ValueError as e:
                raise KnobFileError(f"{path}: {raw_policy}.{raw_key}: {e}") from None
    return out
