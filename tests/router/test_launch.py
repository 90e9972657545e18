"""`python -m l4_sglang.launch`: the emulated fleet serves and leaves nothing behind; the sglang
commands are built right without a GPU."""

import os
import signal
import sys
import time
import types

import openai
import pytest
from router_http import MODEL, Process, call, free_port, poll

from l4_sglang import launch
from l4_sglang.launch_run import pid_alive


def _children(pid: int) -> set[int]:
    """Every live descendant of `pid` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - found
        found |= frontier
    return found


def test_emulated_launch_serves_and_sigterm_leaves_no_child(tmp_path):
    port = free_port()
    proc = Process(
        "-m", "l4_sglang.launch", "--backend", "emulated", "--num-instances", "2", "--port", str(port),
        "--time-scale", "0.05", "--l4-min-samples", "5", "--context-length", "64",
        log_path=tmp_path / "launch.log",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def up():
            if proc.proc.poll() is not None:
                raise AssertionError(proc.output())
            try:
                return call("GET", url + "/health", timeout=1)[0] == 200
            except OSError:
                return False

        poll(up, timeout=60, interval=0.1)
        kids = _children(proc.proc.pid)
        assert len(kids) >= 2, kids
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30)
        out = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5
        )
        assert out.usage.completion_tokens == 5
        # No max_tokens: as SGLang 0.5.14, up to the context length (64 here) less the prompt and one.
        default = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
        assert default.usage.completion_tokens == 64 - default.usage.prompt_tokens - 1
        text = client.completions.create(model=MODEL, prompt="Hi")  # a completion stops at 16, as SGLang
        assert text.usage.completion_tokens == 16
        assert len(call("GET", url + "/workers")[2]) > 0
        assert proc.stop(signal.SIGTERM) == 0
        deadline = time.monotonic() + 10
        while any(pid_alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [k for k in kids if pid_alive(k)]
        log = proc.output()
        assert "EMULATED BACKEND" in log and f"serving on {url}" in log
        assert "cost model: llama3-8b-h100-flashinfer (fitted on a real SGLang engine" in log, log
        assert "time scale: 0.05" in log
        assert "Traceback" not in log, log
    finally:
        proc.stop(signal.SIGKILL)


def test_sglang_commands_one_gpu_group_per_instance():
    flags = ["--tp-size", "2", "--mem-fraction-static", "0.8", "--enable-metrics"]
    plans = launch.sglang_plans(
        "/models/llama", 3, flags, ["0", "1", "2", "3", "4", "5", "6"], [31001, 31002, 31003]
    )
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in plans] == ["0,1", "2,3", "4,5"]
    assert [p.url for p in plans] == [f"http://127.0.0.1:{port}" for port in (31001, 31002, 31003)]
    assert plans[1].cmd == [
        sys.executable, "-m", "sglang.launch_server", "--model-path", "/models/llama",
        "--host", "127.0.0.1", "--port", "31002", *flags,
    ]  # fmt: skip
    assert launch.gpus_per_instance(["--tp=2", "--dp-size", "2"]) == 4
    with pytest.raises(launch.LaunchError, match="need 8 GPUs; 7 visible"):
        launch.sglang_plans("/m", 4, flags, [str(i) for i in range(7)], [1, 2, 3, 4])
    with pytest.raises(launch.LaunchError, match="--port is set by the launcher"):
        launch.sglang_plans("/m", 1, ["--port", "5"], ["0"], [1])
    with pytest.raises(launch.LaunchError, match="--tp-size must be an integer"):
        launch.gpus_per_instance(["--tp-size", "two"])


def test_sglang_instances_share_gpus_k_per_gpu():
    flags = ["--mem-fraction-static", "0.4", "--context-length", "131072"]
    ports = [31001, 31002, 31003, 31004]
    # Two instances on one GPU (the one-GPU dry run), then four on two GPUs.
    two = launch.sglang_plans("/m", 2, flags, ["0"], ports[:2], instances_per_gpu=2)
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in two] == ["0", "0"]
    assert [p.url for p in two] == ["http://127.0.0.1:31001", "http://127.0.0.1:31002"]
    assert [p.cmd[p.cmd.index("--port") + 1] for p in two] == ["31001", "31002"]
    assert [p.name for p in two] == ["sglang-0", "sglang-1"]
    four = launch.sglang_plans("/m", 4, flags, ["4", "5"], ports, instances_per_gpu=2)
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in four] == ["4", "4", "5", "5"]
    assert len({p.url for p in four}) == 4
    # A count that does not divide: the last GPU holds fewer.
    three = launch.sglang_plans("/m", 3, flags, ["0", "1"], ports[:3], instances_per_gpu=2)
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in three] == ["0", "0", "1"]
    # GPU groups (tp 2): two instances on each pair.
    tp = launch.sglang_plans("/m", 4, ["--tp", "2", *flags], list("0123"), ports, instances_per_gpu=2)
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in tp] == ["0,1", "0,1", "2,3", "2,3"]
    # Default 1: one instance a GPU, as before.
    one = launch.sglang_plans("/m", 2, flags, ["0", "1"], ports[:2])
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in one] == ["0", "1"]
    with pytest.raises(
        launch.LaunchError,
        match=r"3 instance\(s\), 2 per GPU group, x 1 GPU\(s\) each need 2 GPUs; 1 visible",
    ):
        launch.sglang_plans("/m", 3, flags, ["0"], ports[:3], instances_per_gpu=2)
    with pytest.raises(launch.LaunchError, match="need 2 GPUs; 1 visible"):
        launch.sglang_plans("/m", 2, flags, ["0"], ports[:2])
    with pytest.raises(launch.LaunchError, match="--instances-per-gpu must be >= 1"):
        launch.sglang_plans("/m", 2, flags, ["0"], ports[:2], instances_per_gpu=0)


def test_shared_gpus_need_a_kv_cap_per_instance():
    assert launch.check_shared_memory([], 1) is None  # one instance a GPU: SGLang's default is right
    with pytest.raises(launch.LaunchError, match=r"pass --max-total-tokens T"):
        launch.check_shared_memory(["--mem-fraction-static", "0.4"], 2)
    assert launch.check_shared_memory(["--max-total-tokens", "300000"], 2) is None
    both = ["--max-total-tokens=300000", "--mem-fraction-static", "0.85"]
    assert launch.check_shared_memory(both, 2) is None
    # The fraction that real SGLang 0.5.14 refused for the instance that started second.
    warning = launch.check_shared_memory(["--max-total-tokens", "300000", "--mem-fraction-static", "0.4"], 2)
    assert warning is not None and "memory free when each instance starts" in warning
    with pytest.raises(launch.LaunchError, match="must be an integer"):
        launch.check_shared_memory(["--max-total-tokens", "lots"], 2)
    with pytest.raises(launch.LaunchError, match="must be >= 1"):
        launch.check_shared_memory(["--max-total-tokens", "0"], 2)
    with pytest.raises(launch.LaunchError, match="must be a number"):
        launch.check_shared_memory(["--max-total-tokens", "9", "--mem-fraction-static", "half"], 2)


def test_launcher_main_k_per_gpu(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(launch, "choose_backend", lambda requested: ("sglang", "asked for"))
    monkeypatch.setattr(launch, "validate_sglang_flags", lambda model, flags: None)
    monkeypatch.setattr(launch, "visible_gpus", lambda: ["0"])
    started = []

    async def fake_run(plans, settings, wait, smoke, model):
        started.append((plans, settings))
        return 0

    monkeypatch.setattr(launch, "run", fake_run)
    base = [
        "--backend",
        "sglang",
        "--model-path",
        str(tmp_path),
        "--num-instances",
        "2",
        "--skip-tokenizer-init",
    ]
    # Two instances, one GPU: refused without --instances-per-gpu, and without a KV cap each.
    assert launch.main(base) == 2
    assert "need 2 GPUs; 1 visible" in capsys.readouterr().err
    assert launch.main([*base, "--instances-per-gpu", "2"]) == 2
    assert "pass --max-total-tokens" in capsys.readouterr().err and not started
    assert launch.main([*base, "--instances-per-gpu", "2", "--max-total-tokens", "300000"]) == 0
    err = capsys.readouterr().err
    assert "2 instances per GPU (sglang-0 on GPU 0, sglang-1 on GPU 0)" in err
    plans, settings = started[0]
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in plans] == ["0", "0"]
    assert all(p.cmd[-2:] == ["--max-total-tokens", "300000"] for p in plans)
    assert "--instances-per-gpu" not in plans[0].cmd  # the launcher's own flag stays here
    assert list(settings.worker_urls) == [p.url for p in plans] and len(set(settings.worker_urls)) == 2
    with pytest.raises(SystemExit):
        launch.main([*base, "--instances-per-gpu", "0"])


def test_sglang_flags_are_checked_by_sglangs_own_parser(monkeypatch):
    # A stand-in for sglang.srt.server_args: the launcher must hand the flags to ServerArgs.add_cli_args.
    class ServerArgs:
        @staticmethod
        def add_cli_args(parser):
            parser.add_argument("--model-path", required=True)
            parser.add_argument("--tp-size", type=int, default=1)

    module = types.ModuleType("sglang.srt.server_args")
    module.ServerArgs = ServerArgs
    for name in ("sglang", "sglang.srt"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "sglang.srt.server_args", module)
    launch.validate_sglang_flags("/m", ["--tp-size", "2"])
    with pytest.raises(launch.LaunchError, match="SGLang rejects"):
        launch.validate_sglang_flags("/m", ["--no-such-flag"])
    with pytest.raises(launch.LaunchError, match="SGLang rejects"):
        launch.validate_sglang_flags("/m", ["--tp-size", "x"])


def test_emulated_workers_get_the_flags_they_understand():
    kept, ignored = launch.emulated_worker_flags(
        [
            "--max-total-tokens",
            "5000",
            "--random-seed=3",
            "--disable-radix-cache",
            "--mem-fraction-static",
            "0.8",
        ]
    )
    assert kept == ["--max-total-tokens", "5000", "--seed", "3", "--disable-radix-cache"]
    assert ignored == ["--mem-fraction-static", "0.8"]
    plans = launch.emulated_plans(2, [1, 2], MODEL, "llama3-8b-h100-default", 0.5, kept)
    assert plans[0].cmd[1:3] == ["-m", "l4_sglang.emulated_worker"] and plans[0].cmd[-5:] == kept
    assert "--time-scale" in plans[1].cmd and "0.5" in plans[1].cmd


def test_backend_choice(monkeypatch):
    monkeypatch.setattr(launch, "visible_gpus", lambda: [])
    monkeypatch.setattr(launch, "sglang_available", lambda: True)
    assert launch.choose_backend("auto")[0] == "emulated"
    monkeypatch.setattr(launch, "visible_gpus", lambda: ["0"])
    assert launch.choose_backend("auto")[0] == "sglang"
    monkeypatch.setattr(launch, "sglang_available", lambda: False)
    backend, why = launch.choose_backend("auto")
    assert backend == "emulated" and "sglang package is not installed" in why
    with pytest.raises(launch.LaunchError, match="needs the sglang package"):
        launch.choose_backend("sglang")
    assert launch.choose_backend("emulated")[0] == "emulated"


def test_sglang_backend_without_sglang_errors_clearly(monkeypatch, capsys):
    monkeypatch.setattr(launch, "sglang_available", lambda: False)
    assert launch.main(["--backend", "sglang", "--model-path", "/m"]) == 2
    assert "needs the sglang package" in capsys.readouterr().err


def test_sglang_backend_needs_a_tokenizer_unless_workers_skip_theirs(monkeypatch, tmp_path, capsys):
    # A model folder with no tokenizer.json, like the GPU recipe's random-weight model.
    monkeypatch.setattr(launch, "choose_backend", lambda requested: ("sglang", "asked for"))
    monkeypatch.setattr(launch, "validate_sglang_flags", lambda model, flags: None)
    monkeypatch.setattr(launch, "visible_gpus", lambda: ["0", "1"])
    started = []

    async def fake_run(plans, settings, wait, smoke, model):
        started.append((plans, settings))
        return 0

    monkeypatch.setattr(launch, "run", fake_run)
    base = ["--backend", "sglang", "--model-path", str(tmp_path), "--num-instances", "2"]
    assert launch.main(base) == 2
    assert "no tokenizer.json found" in capsys.readouterr().err and not started

    assert launch.main([*base, "--skip-tokenizer-init"]) == 0
    plans, settings = started[0]
    assert settings.tokenizer_path is None  # the router's built-in tokenizer
    assert "NOT the model's" in capsys.readouterr().err
    assert all("--skip-tokenizer-init" in plan.cmd for plan in plans)
    assert [plan.env["CUDA_VISIBLE_DEVICES"] for plan in plans] == ["0", "1"]


def test_launcher_sigterm_drains_a_stream_in_flight(tmp_path):
    import json
    import threading
    import urllib.request

    port = free_port()
    proc = Process(
        "-m", "l4_sglang.launch", "--backend", "emulated", "--num-instances", "1", "--port", str(port),
        log_path=tmp_path / "launch.log",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        poll(lambda: proc.proc.poll() is None and _up(url), timeout=60, interval=0.1)
        body = {"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 300, "ignore_eos": True}}
        chunks: list[str] = []
        first = threading.Event()

        def stream():
            req = urllib.request.Request(
                url + "/generate", json.dumps({**body, "stream": True}).encode(), method="POST"
            )
            with urllib.request.urlopen(req, timeout=60) as resp:
                for line in resp:
                    if line.startswith(b"data:"):
                        chunks.append(line.decode().strip())
                        first.set()

        client = threading.Thread(target=stream)
        client.start()
        assert first.wait(30)
        proc.proc.send_signal(signal.SIGTERM)  # ~300 steps of ~6 ms are still to come
        client.join(60)
        assert chunks[-1] == "data: [DONE]"
        last = json.loads(chunks[-2][len("data:") :])
        assert len(last["output_ids"]) == 300 and last["meta_info"]["finish_reason"]["type"] == "length"
        assert proc.proc.wait(30) == 0
        assert "draining" in proc.output()
    finally:
        proc.stop(signal.SIGKILL)


def _up(url: str) -> bool:
    try:
        return call("GET", url + "/health", timeout=1)[0] == 200
    except OSError:
        return False
