"""The command lines: every flag explains itself and shows its default, router defaults come from
RouterSettings, and a mistyped flag of ours stops the launcher with the nearest one it knows."""

import argparse
import dataclasses
import subprocess
import sys

import pytest

from l4_sglang import emulated_worker, launch, launch_router
from l4_sglang.bench import cli as bench_cli
from l4_sglang.cli_help import HelpFormatter
from l4_sglang.core import DEFAULT_COST_MODEL, CostModel
from l4_sglang.router.app import RouterSettings

PARSERS = {
    "launch": launch.build_parser,
    "launch_router": launch_router.build_parser,
    "emulated_worker": emulated_worker.build_parser,
    "bench": bench_cli.build_parser,
}
# launch_router flag dest -> RouterSettings field, where the names differ.
RENAMED = {"health_failure_threshold": "failure_threshold", "health_recovery_threshold": "recovery_threshold"}


@pytest.mark.parametrize("name", PARSERS)
def test_every_flag_has_help_and_shows_its_default(name):
    p = PARSERS[name]()
    fmt = HelpFormatter(p.prog)
    for action in p._actions:
        assert action.help and action.help.strip(), f"{name}: {action.option_strings} has no help"
        if isinstance(action, argparse._HelpAction):
            continue
        shown = fmt._get_help_string(action)
        if action.default is not None and action.default is not False:
            assert "default" in shown, f"{name}: {action.option_strings} hides its default"
        else:  # no value to show: the help says in words what happens, or it is a switch
            assert (
                isinstance(action, argparse._StoreTrueAction)
                or action.required
                or "default" in shown
                or ("knob__" in action.dest)
            ), f"{name}: {action.option_strings} (default None) does not say what it defaults to"


def test_help_formatter_shows_zero_and_not_none():
    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    p.add_argument("--zero", type=int, default=0, help="z")
    p.add_argument("--none", default=None, help="n")
    p.add_argument("--said", default=3, help="s (default: three)")
    text = " ".join(p.format_help().split())
    assert "z (default: 0)" in text
    assert "n (default" not in text and "s (default: three)" in text and "(default: 3)" not in text


def test_router_flag_defaults_are_router_settings_defaults():
    args = launch_router.build_parser().parse_args([])
    fields = {f.name: f for f in dataclasses.fields(RouterSettings)}
    checked = 0
    for dest, value in vars(args).items():
        field = fields.get(RENAMED.get(dest, dest))
        if field is None or field.default is dataclasses.MISSING:
            continue
        assert value == field.default or (dest == "worker_urls" and tuple(value) == field.default), dest
        checked += 1
    assert checked >= 15, checked
    with pytest.raises(KeyError):
        launch_router.settings_default("no_such_field")


def test_default_cost_model_is_fitted_and_the_help_says_so():
    params = CostModel.load(DEFAULT_COST_MODEL).params
    assert params["provenance"]["status"].startswith("fitted on a real SGLang engine")
    assert DEFAULT_COST_MODEL != "llama3-8b-h100-default"
    for build in (launch.build_parser, emulated_worker.build_parser, bench_cli.build_parser):
        assert DEFAULT_COST_MODEL in " ".join(build().format_help().split())


def test_max_tokens_help_says_what_sglang_does():
    text = " ".join(launch.build_parser().format_help().split())
    assert "the context length minus the prompt and one, as SGLang 0.5.14 does" in text
    assert "a completion without max_tokens stops at 16" in text


def test_instances_per_gpu_help_says_what_the_launcher_checks():
    text = " ".join(launch.build_parser().format_help().split())
    assert "--max-total-tokens" in text and "0.85 / K fails" in text
    assert "check_shared_memory" not in text  # no internal names
    # What the help promises is what the launcher does.
    with pytest.raises(launch.LaunchError, match="--max-total-tokens"):
        launch.check_shared_memory(["--mem-fraction-static", "0.42"], 2)
    assert "0.4" in launch.check_shared_memory(["--max-total-tokens", "9", "--mem-fraction-static", "0.4"], 2)


@pytest.mark.parametrize(
    ("flag", "near"),
    [("--l4-bogus", "--l4-bins"), ("--l4-min-sample", "--l4-min-samples"), ("--router-port", "--port")],
)
def test_a_mistyped_flag_of_ours_is_an_error_naming_the_nearest(flag, near, capsys):
    with pytest.raises(SystemExit) as e:
        launch.parse_args([flag, "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"unknown flag {flag} (did you mean {near}?)" in err


def test_sglang_flags_still_pass_through():
    _, args, passthrough = launch.parse_args(
        ["--l4-min-samples", "3", "--mem-fraction-static", "0.8", "--random-seed", "7", "--enable-metrics"]
    )
    assert passthrough == ["--mem-fraction-static", "0.8", "--random-seed", "7", "--enable-metrics"]
    assert args.knob__l4__min_samples == "3"


def test_launch_module_exits_2_on_a_mistyped_knob():
    out = subprocess.run(
        [sys.executable, "-m", "l4_sglang.launch", "--l4-bogus", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "unknown flag --l4-bogus (did you mean --l4-bins?)" in out.stderr
    assert "EMULATED BACKEND" not in out.stderr  # stopped before anything started


def test_launch_router_names_the_nearest_flag(capsys):
    with pytest.raises(SystemExit) as e:
        launch_router.parse_args(["--tick-intervall", "0.1"])
    assert e.value.code == 2
    assert "--tick-intervall (did you mean --tick-interval?)" in capsys.readouterr().err
