"""What the command lines share: --help that shows every default, and near-miss flag errors."""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Iterable


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
