"""Ports for the instances the launcher starts: each instance's own, and every one SGLang derives.

SGLang 0.5.14 derives ports from `--port` and refuses or collides on some of them
(`sglang/srt/server_args.py`):
- `grpc_port = port + 10000` (unless SGLANG_GRPC_PORT is set), checked to lie in 1..65535 even when
  gRPC is off, so an OS-chosen port above 55535 fails the start;
- `grpc_http_sidecar_port` defaults to `port + 1` in gRPC mode;
- with `--enable-dp-attention` on one node, ZMQ sockets on `port + 233` and the six ports after it;
- `nccl_port` (torch.distributed's rendezvous, bound even at tp 1) is a free port drawn by each
  instance as it starts, so instances starting together on one host can draw the same one
  (`DistNetworkError ... EADDRINUSE`). The launcher therefore hands each instance `--nccl-port`.

`allocate` picks, for each instance, an HTTP port whose derived ports are all valid, and a NCCL
port, every one free when picked and none shared with another instance or the router.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

MAX_PORT = 65535
GRPC_PORT_OFFSET = 10000
GRPC_SIDECAR_OFFSET = 1
DP_ATTENTION_ZMQ_OFFSET = 233
DP_ATTENTION_ZMQ_PORTS = 7
"""dist-init port (+233), then port_base and the five ports after it (SGLang's PortArgs)."""
LOWEST_PORT = 20000
"""Below the usual ephemeral range's neighbours, above well-known and registered services."""


def derived_ports(port: int, dp_attention: bool = False) -> list[int]:
    """The ports SGLang derives from `--port` (validated or bound, depending on its mode)."""
    ports = [port + GRPC_SIDECAR_OFFSET, port + GRPC_PORT_OFFSET]
    if dp_attention:
        first = port + DP_ATTENTION_ZMQ_OFFSET
        ports += range(first, first + DP_ATTENTION_ZMQ_PORTS)
    return ports


@dataclass(frozen=True)
class InstancePorts:
    http: int
    nccl: int
    dp_attention: bool = False

    def all(self) -> list[int]:
        """Every port this instance may validate or bind."""
        return [self.http, self.nccl, *derived_ports(self.http, self.dp_attention)]


def port_is_free(host: str, port: int, reuse_address: bool = False) -> bool:
    """Whether `port` can be bound. `reuse_address`: as a server that sets SO_REUSEADDR binds
    (aiohttp's router does), so connections of a stopped server still in TIME_WAIT do not count."""
    with socket.socket() as s:
        if reuse_address:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class PortError(RuntimeError):
    """No set of valid, free ports could be found."""


def allocate(
    count: int,
    host: str = "127.0.0.1",
    *,
    dp_attention: bool = False,
    reserved: Iterable[int] = (),
    is_free: Callable[[str, int], bool] = port_is_free,
    rng: random.Random | None = None,
    attempts: int = 2000,
) -> list[InstancePorts]:
    """`count` instances' ports: valid for every derivation, free now, and pairwise disjoint.

    `reserved` ports (the router's) are never handed out. Ports are drawn at random rather than
    from the OS so that each one's derivations can be checked before it is used."""
    rng = rng or random.Random()
    taken = set(reserved)
    top = MAX_PORT - GRPC_PORT_OFFSET  # the highest port whose gRPC port is still valid
    out: list[InstancePorts] = []

    def draw(low: int, high: int, group: Callable[[int], list[int]]) -> int:
        for _ in range(attempts):
            port = rng.randint(low, high)
            ports = group(port)
            valid = all(1 <= p <= MAX_PORT for p in ports) and taken.isdisjoint(ports)
            if valid and all(is_free(host, p) for p in ports):
                taken.update(ports)
                return port
        raise PortError(f"no free port range found on {host} between {low} and {high} ({attempts} draws)")

    for _ in range(count):
        http = draw(LOWEST_PORT, top, lambda p: [p, *derived_ports(p, dp_attention)])
        nccl = draw(LOWEST_PORT, MAX_PORT, lambda p: [p])
        out.append(InstancePorts(http, nccl, dp_attention))
    return out


__all__ = [
    "GRPC_PORT_OFFSET",
    "MAX_PORT",
    "InstancePorts",
    "PortError",
    "allocate",
    "derived_ports",
    "port_is_free",
]
