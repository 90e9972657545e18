"""The launcher never hands SGLang a port whose derived ports are invalid or shared (no GPU needed)."""

import random
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l4_sglang import launch, ports


class HighFirst(random.Random):
    """Draws the given ports first (the ones an OS may hand out), then random ones."""

    def __init__(self, first, seed=0):
        super().__init__(seed)
        self.first = list(first)

    def randint(self, a, b):
        while self.first:
            p = self.first.pop(0)
            if a <= p <= b:
                return p
        return super().randint(a, b)


def sglang_accepts(port: int) -> bool:
    """SGLang 0.5.14 ServerArgs: grpc_port = port + 10000 must lie in 1..65535."""
    return 1 <= port + 10000 <= 65535


def test_a_port_whose_grpc_port_overflows_is_never_chosen():
    # 55536 + 10000 = 65536: SGLang refuses it ("SGLANG_GRPC_PORT (65536) must be between 1 and 65535").
    rng = HighFirst([60999, 58525, 55536])
    got = ports.allocate(3, is_free=lambda h, p: True, rng=rng)
    assert all(sglang_accepts(ip.http) for ip in got)
    assert not {60999, 58525, 55536} & {ip.http for ip in got}


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), count=st.integers(1, 64), dp=st.booleans())
def test_every_allocation_is_valid_and_disjoint(seed, count, dp):
    got = ports.allocate(
        count, is_free=lambda h, p: True, rng=random.Random(seed), dp_attention=dp, reserved=[30000]
    )
    every = [p for ip in got for p in ip.all()]
    assert len(every) == len(set(every)), "two instances (or one instance's derivations) share a port"
    assert 30000 not in every
    assert all(1 <= p <= 65535 for p in every)
    assert all(sglang_accepts(ip.http) for ip in got)
    if dp:  # dp attention binds port + 233 .. port + 239 too
        assert all(ip.http + 239 in ip.all() for ip in got)


def test_ports_in_use_are_skipped():
    busy = {21000, 31500}
    # 21000 is busy itself; 20999's gRPC sidecar (+1) is 21000; 21500's gRPC port (+10000) is 31500.
    rng = HighFirst([21000, 20999, 21500])
    got = ports.allocate(2, is_free=lambda h, p: p not in busy, rng=rng)
    assert not {21000, 20999, 21500} & {ip.http for ip in got}
    for ip in got:
        assert busy.isdisjoint(ip.all())


def test_real_loopback_ports_are_bindable_and_a_taken_one_is_not_handed_out():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        assert not ports.port_is_free("127.0.0.1", taken)
        got = ports.allocate(8, "127.0.0.1", reserved=[taken])
        for ip in got:
            assert taken not in ip.all()
            assert ports.port_is_free("127.0.0.1", ip.http) and ports.port_is_free("127.0.0.1", ip.nccl)


def test_no_free_ports_is_a_clear_error():
    with pytest.raises(ports.PortError, match="no free port"):
        ports.allocate(1, is_free=lambda h, p: False, attempts=50)


def test_each_sglang_instance_gets_its_own_nccl_port_and_may_not_set_one():
    plans = launch.sglang_plans(
        "/m",
        4,
        ["--max-total-tokens", "100000"],
        ["0"],
        [31001, 31002, 31003, 31004],
        instances_per_gpu=4,
        nccl_ports=[41001, 41002, 41003, 41004],
    )
    nccl = [p.cmd[p.cmd.index("--nccl-port") + 1] for p in plans]
    assert nccl == ["41001", "41002", "41003", "41004"]
    with pytest.raises(launch.LaunchError, match="--nccl-port is set by the launcher"):
        launch.sglang_plans("/m", 1, ["--nccl-port", "5000"], ["0"], [31001])


def test_launcher_main_hands_sglang_valid_distinct_ports(monkeypatch, tmp_path):
    monkeypatch.setattr(launch, "choose_backend", lambda requested: ("sglang", "asked for"))
    monkeypatch.setattr(launch, "validate_sglang_flags", lambda model, flags: None)
    monkeypatch.setattr(launch, "visible_gpus", lambda: ["0"])
    started = []

    async def fake_run(plans, settings, wait, smoke, model):
        started.append(plans)
        return 0

    monkeypatch.setattr(launch, "run", fake_run)
    router_port = ports.allocate(1)[0].http
    argv = [
        "--backend",
        "sglang",
        "--model-path",
        str(tmp_path),
        "--num-instances",
        "16",
        "--instances-per-gpu",
        "16",
        "--max-total-tokens",
        "10000",
        "--skip-tokenizer-init",
        "--port",
        str(router_port),
    ]
    for _ in range(5):
        assert launch.main(argv) == 0
    for plans in started:
        http = [int(p.cmd[p.cmd.index("--port") + 1]) for p in plans]
        nccl = [int(p.cmd[p.cmd.index("--nccl-port") + 1]) for p in plans]
        assert all(sglang_accepts(p) for p in http)
        every = [q for p in http for q in ports.derived_ports(p)] + http + nccl + [router_port]
        assert len(every) == len(set(every))


def test_launcher_refuses_a_taken_router_port_before_starting_workers(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(launch, "choose_backend", lambda requested: ("emulated", "asked for"))

    async def must_not_run(*a, **k):
        raise AssertionError("workers started although the router's port is taken")

    monkeypatch.setattr(launch, "run", must_not_run)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        assert launch.main(["--port", str(taken), "--num-instances", "1"]) == 2
    assert f"port 127.0.0.1:{taken} is taken" in capsys.readouterr().err


def test_the_routers_port_is_free_again_right_after_a_server_on_it_stopped():
    # A server that closed its side of a connection leaves it in TIME_WAIT on its port for a
    # minute; the router (aiohttp, SO_REUSEADDR) binds there anyway, so the launcher's check must too.
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    conn.close()  # the server side closes first: TIME_WAIT is on the server's port
    client.recv(1)
    client.close()
    server.close()
    assert not ports.port_is_free("127.0.0.1", port)  # a plain bind still fails
    assert ports.port_is_free("127.0.0.1", port, reuse_address=True)
