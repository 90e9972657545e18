"""`--policy-config FILE` (knob_file.py): policy knobs from a JSON or TOML file, in launch_router, launch,
the bench and the bench suite; a flag beats the file; unknown names and bad files exit 2."""

from __future__ import annotations

import json

import pytest

from l4_sglang import launch, launch_router
from l4_sglang.bench import cli as bench_cli
from l4_sglang.bench import suite
from l4_sglang.cli_help import knobs_for, parse_strict

DOC = {
    "l4": {"min_gain": 0.1, "worker_cost_models": ["w0=llama3-8b-h200-flashinfer"]},
    "static_buckets": {"boundaries": [8192]},
}
TOML = '[l4]\nmin_gain = 0.1\nworker_cost_models = ["w0=llama3-8b-h200-flashinfer"]\n\n'
TOML += '[static-buckets]\nboundaries = "8192"\n'  # dashes for underscores; a string as a flag's text
WANT_L4 = {"min_gain": 0.1, "worker_cost_models": ("w0=llama3-8b-h200-flashinfer",)}


@pytest.fixture(params=["json", "toml"])
def config(request, tmp_path):
    path = tmp_path / f"knobs.{request.param}"
    path.write_text(json.dumps(DOC) if request.param == "json" else TOML)
    return str(path)


def _router(*argv: str):
    settings, _ = launch_router.parse_args(["--worker-urls", "http://127.0.0.1:1", *argv])
    return settings


def _exit_2(capsys, call) -> str:
    with pytest.raises(SystemExit) as e:
        call()
    assert e.value.code == 2
    return capsys.readouterr().err


def test_router_takes_the_file_and_a_flag_beats_it(config):
    assert _router("--policy-config", config).policy_overrides == WANT_L4
    got = _router("--policy-config", config, "--l4-min-gain", "0.3").policy_overrides
    assert got == {**WANT_L4, "min_gain": 0.3}
    sb = _router("--policy", "static_buckets", "--policy-config", config).policy_overrides
    assert sb == {"boundaries": (8192,)}  # the l4 table is checked and left unused
    assert _router("--policy", "round_robin", "--policy-config", config).policy_overrides == {}


def test_launch_takes_the_file(config):
    p, args, passthrough = launch.parse_args(["--policy-config", config, "--l4-min-gain", "0.2"])
    assert passthrough == []
    settings = launch_router.settings_from(p, args, ["http://127.0.0.1:1"], args.port, args.host)
    assert settings.policy_overrides == {**WANT_L4, "min_gain": 0.2}


def test_bench_takes_the_file_for_the_policies_it_runs(config, tmp_path):
    p = bench_cli.build_parser()
    argv = ["--trace", "t.jsonl", "--output-dir", str(tmp_path), "--instances", "4"]
    args = parse_strict(p, [*argv, "--policies", "l4,round_robin", "--policy-config", config])
    knobs = bench_cli.policy_knobs(p, args, bench_cli._validate(p, args))
    assert knobs == {"l4": WANT_L4}


def test_suite_takes_the_file(config):
    p = suite.build_parser()
    argv = ["--output-dir", "o", "--policy-config", config, "--static-buckets-boundaries", "4096"]
    args = parse_strict(p, argv)
    knobs = knobs_for(p, args, suite.SUITE_POLICIES, "which --policies does not run")
    assert knobs == {"l4": WANT_L4, "static_buckets": {"boundaries": (4096,)}}


def test_bench_live_mode_refuses_the_file(config, tmp_path, capsys):
    p = bench_cli.build_parser()
    argv = ["--trace", "t.jsonl", "--output-dir", str(tmp_path), "--mode", "live", "--url", "http://x:1"]
    args = parse_strict(p, [*argv, "--policy-config", config])
    assert "--policy-config is for --mode sim" in _exit_2(capsys, lambda: bench_cli.policy_knobs(p, args, []))


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("k.json", '{"l4": {"min_gian": 0.1}}', "l4.min_gian: unknown knob of l4 (did you mean 'min_gain'?)"),
        ("k.toml", "[l4]\nmin_gian = 0.1\n", "l4.min_gian: unknown knob of l4 (did you mean 'min_gain'?)"),
        ("k.json", '{"llumnx": {}}', "unknown policy 'llumnx' (did you mean 'llumnix'?)"),
        ("k.json", '{"l4": 3}', "l4: expected a table of knobs"),
        ("k.json", '{"l4": {"min_gain": "x"}}', "l4.min_gain: invalid min_gain: expected float"),
        ("k.json", '{"l4": {"bins": 2.5}}', "l4.bins: invalid bins: expected int"),
        ("k.json", '{"l4": ', "not valid JSON"),
        ("k.toml", "[l4\n", "not valid TOML"),
        ("k.json", "[1]", "expected a table of policy names"),
    ],
)
def test_a_bad_file_exits_2_naming_the_file_and_key(tmp_path, capsys, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    err = _exit_2(capsys, lambda: _router("--policy-config", str(path)))
    assert f"--policy-config {path}: " in err and message in err


def test_a_value_the_config_refuses_names_the_file(tmp_path, capsys):
    path = tmp_path / "k.json"
    path.write_text('{"l4": {"min_gain": -1}}')
    err = _exit_2(capsys, lambda: _router("--policy-config", str(path)))
    assert f"policy l4 (knobs from --policy-config {path}): invalid min_gain" in err
    # a table of a policy this run does not use is checked all the same
    err = _exit_2(capsys, lambda: _router("--policy", "round_robin", "--policy-config", str(path)))
    assert "invalid min_gain" in err


def test_a_missing_file_exits_2(tmp_path, capsys):
    err = _exit_2(capsys, lambda: _router("--policy-config", str(tmp_path / "none.json")))
    assert f"--policy-config {tmp_path / 'none.json'}: cannot read it" in err


def test_launch_names_a_mistyped_policy_config_flag(capsys):
    err = _exit_2(capsys, lambda: launch.parse_args(["--policy-confg", "x.json"]))
    assert "unknown flag --policy-confg (did you mean --policy-config?)" in err
