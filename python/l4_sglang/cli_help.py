"""What the command lines share: --help that shows every default, and near-miss flag errors."""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Collection, Iterable, Sequence
from typing import Any


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and "(default: X)" after each flag that has a value.

    A None or False default is left out: None means the help says in words what happens, and
    False is a switch that is off. ArgumentDefaultsHelpFormatter would print both literally."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "%(default)" in text or "(default" in text:
            return text
        # `is`, not `in`: 0 == False, and a default of 0 is worth showing.
        if any(action.default is v for v in (None, False, argparse.SUPPRESS)) or not action.option_strings:
            return text
        if isinstance(action.default, list | tuple) and not action.default:
            return text
        return text + " (default: %(default)s)"


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [s for a in parser._actions for s in a.option_strings if s.startswith("--")]


def nearest(flag: str, known: Iterable[str]) -> str | None:
    """The known flag closest to a mistyped one (None when nothing is close)."""
    found = difflib.get_close_matches(flag, list(known), n=1, cutoff=0.6)
    return found[0] if found else None


def unknown_own_flags(
    parser: argparse.ArgumentParser, tokens: Iterable[str], prefixes: Iterable[str]
) -> list[tuple[str, str | None]]:
    """(flag, nearest known flag) for each token in `tokens` that starts with one of `prefixes`
    (flags this program owns) but that `parser` does not know: a typo, not a flag for someone else."""
    known = option_strings(parser)
    prefixes = tuple(prefixes)
    out = []
    for token in tokens:
        name = token.partition("=")[0]
        if name.startswith(prefixes) and name not in known:
            out.append((name, nearest(name, known)))
    return out


def knob_flag(policy: str, knob: str) -> str:
    """The command-line flag of a policy knob: `--<policy>-<knob>`, underscores as dashes."""
    return f"--{policy.replace('_', '-')}-{knob.replace('_', '-')}"


def knob_dest(policy: str, knob: str) -> str:
    return f"knob__{policy}__{knob}"


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def add_policy_knobs(p: argparse.ArgumentParser) -> None:
    """A flag `--<policy>-<knob> V` for every knob of every policy, from the policies' Config
    dataclasses (`policy_config_fields`); each defaults to None (not given)."""
    from l4_sglang.policy.registry import POLICIES, policy_config_fields

    knobs = p.add_argument_group("policy knobs (--<policy>-<knob>, or --policy-config FILE)")
    knobs.add_argument(
        "--policy-config",
        default=None,
        metavar="FILE",
        help="policy knobs from a JSON or TOML (.toml) file: a table per policy, knobs named as the "
        'flags without --<policy>- (JSON: {"l4": {"min_gain": 0.1}, "static_buckets": {"boundaries": '
        "[8192]}}; TOML: [l4] min_gain = 0.1); a knob flag given beside it wins; an unknown policy or "
        "knob is an error (default: no file, every knob at its default unless a flag sets it)",
    )
    for name in POLICIES:
        for f in policy_config_fields(name):
            knobs.add_argument(
                knob_flag(name, f.name),
                dest=knob_dest(name, f.name),
                default=None,
                metavar="V",
                help=f"{f.help} (default: {_show(f.default)})",
            )


def given_knobs(p: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """{policy: {knob: parsed value}} of the knob flags given (policies without any left out);
    a value that does not parse is a parser error naming its flag."""
    from l4_sglang.policy.registry import POLICIES, policy_config_fields

    out: dict[str, dict[str, Any]] = {}
    for name in POLICIES:
        for f in policy_config_fields(name):
            raw = getattr(args, knob_dest(name, f.name))
            if raw is None:
                continue
            try:
                out.setdefault(name, {})[f.name] = f.parse(raw)
            except ValueError as e:
                p.error(f"{knob_flag(name, f.name)}: {e}")
    return out


def check_knobs(p: argparse.ArgumentParser, policy: str, overrides: dict[str, Any], where: str = "") -> None:
    """Parser error when `overrides` do not make a valid Config of `policy` (`where`: after the
    policy's name in the message)."""
    from l4_sglang.policy.registry import make_config

    try:
        make_config(policy, overrides)
    except ValueError as e:
        p.error(f"policy {policy}{where}: {e}")


def file_knobs(p: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """{policy: {knob: value}} of the file `--policy-config` names (empty without one); a file that
    does not read or parse, or an unknown policy or knob in it, is a parser error (`knob_file`)."""
    from l4_sglang.knob_file import KnobFileError, load_knob_file

    path = getattr(args, "policy_config", None)
    if path is None:
        return {}
    try:
        return load_knob_file(path)
    except KnobFileError as e:
        p.error(f"--policy-config {e}")


def knobs_for(
    p: argparse.ArgumentParser, args: argparse.Namespace, policies: Collection[str], elsewhere: str
) -> dict[str, dict[str, Any]]:
    """{policy: overrides} of the knobs given, each checked as a Config of its policy: those of the
    `--policy-config` file, with the knob flags given laid over them. A knob flag of a policy outside
    `policies` is a parser error: `<flag> is a knob of policy 'p', <elsewhere>`; the file's tables of
    other policies are checked on their own and left out (one file may serve several runs)."""
    given = given_knobs(p, args)
    for name, knobs in given.items():
        if name not in policies:
            p.error(f"{knob_flag(name, next(iter(knobs)))} is a knob of policy {name!r}, {elsewhere}")
    from_file = file_knobs(p, args)
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys([*from_file, *given]):
        merged = {**from_file.get(name, {}), **given.get(name, {})}
        where = f" (knobs from --policy-config {args.policy_config})" if name in from_file else ""
        check_knobs(p, name, merged, where)
        if name in policies and merged:
            out[name] = merged
    return out


def parse_strict(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """`p.parse_args`, with each unknown flag named beside the nearest known one (`reject_unknown`)."""
    args, extra = p.parse_known_args(argv)
    if extra:
        reject_unknown(p, extra)
    return args


def reject_unknown(p: argparse.ArgumentParser, tokens: Sequence[str]) -> None:
    """Exit 2 naming each unknown flag and the nearest known one."""
    parts = []
    for token in tokens:
        name = token.partition("=")[0]
        near = nearest(name, option_strings(p)) if name.startswith("-") else None
        parts.append(f"{token} (did you mean {near}?)" if near else token)
    p.error("unrecognized arguments: " + " ".join(parts))
