"""The compare job's plumbing (bench/fleet_compare.py): its log, blocking HTTP, and the processes
it starts, each leading its own process group (l4_sglang.launch_run's helpers) and marked so that
what is left at the end is found without touching anyone else's."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from l4_sglang.launch_run import pid_alive, spawn_group, stop_group

LEFTOVER_MARKS = ("sglang.launch_server", "sglang::", "l4_sglang.emulated_worker", "l4_sglang.launch",
                  "l4_sglang.bench", "smg launch", "smg.launch_router")  # fmt: skip
MARK_VAR = "L4PC_FLEET"
"""Every process this job starts carries MARK_VAR=<fleet id> in its environment (and so do their
children): what is left at the end is found by it, and processes of others are never touched."""
T0_WALL = float(os.environ.get("JOB_T0", time.time()))


def now() -> float:
    return time.monotonic()


class Log:
    """Timestamped lines (seconds since the job's start) to stdout and DIR/job.log."""

    def __init__(self) -> None:
        self.f = None

    def open(self, path: Path) -> None:
        self.f = path.open("a", buffering=1)

    def __call__(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')} +{time.time() - T0_WALL:6.1f}s] {msg}"
        print(line, flush=True)
        if self.f is not None:
            self.f.write(line + "\n")


log = Log()


# ---- HTTP (blocking: the job waits on every answer) ---------------------------------------------


def http(method: str, url: str, body: dict | None = None, timeout: float = 10) -> tuple[int, str]:
    """(status, body text); status 0 when nothing answered."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (OSError, ValueError) as e:
        return 0, str(e)


def get_json(url: str, timeout: float = 10):
    status, text = http("GET", url, timeout=timeout)
    if status != 200:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def listed_workers(url: str) -> list[dict]:
    """A router's `/workers` list (ours: {"workers": [...]}; smg's may be the list itself)."""
    body = get_json(url + "/workers", timeout=5)
    found = body.get("workers") if isinstance(body, dict) else body
    return [w for w in found if isinstance(w, dict)] if isinstance(found, list) else []


def wait_until(what: str, check, timeout: float, every: float = 1.0, proc: Proc | None = None) -> bool:
    end = now() + timeout
    last = now()
    while now() < end:
        if check():
            return True
        if proc is not None and proc.exited():
            log(f"{what}: its process exited with code {proc.p.returncode}")
            return False
        if now() - last > 30:
            log(f"still waiting: {what}")
            last = now()
        time.sleep(every)
    log(f"timed out after {timeout:.0f} s: {what}")
    return False


# ---- processes ----------------------------------------------------------------------------------


def stop(pid: int, grace: float, name: str, popen: subprocess.Popen | None = None) -> int | None:
    rc, in_time = stop_group(pid, grace, popen)
    if not in_time:
        log(f"{name} still running {grace:.0f} s after SIGTERM: SIGKILL")
    return rc


class Proc:
    """A child leading its own process group, marked with the fleet's id, output to a log file; it
    does not die with this process (a kept fleet outlives the call)."""

    def __init__(self, name: str, cmd: list[str], log_path: Path, marker: str) -> None:
        self.name = name
        self.cmd = cmd
        log(f"start {name}: {shlex.join(cmd)}")
        with log_path.open("ab") as f:
            self.p = spawn_group(
                cmd, {MARK_VAR: marker}, die_with_parent=False, stdout=f, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def exited(self) -> bool:
        return self.p.poll() is not None

    def stop(self, grace: float = 30.0) -> int | None:
        return stop(self.p.pid, grace, self.name, self.p)


def processes(marker: str | None) -> list[str]:
    """Live processes (other than this one): with `marker`, those whose environment carries it;
    without, those of the kinds this job starts, by command line (for information only)."""
    me = os.getpid()
    tag = f"{MARK_VAR}={marker}".encode() if marker else None
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me or not pid_alive(int(entry)):
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if tag is not None and tag not in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                continue
        except OSError:
            continue
        if tag is None and not any(mark in cmd for mark in LEFTOVER_MARKS):
            continue
        found.append(f"{entry} {cmd.strip()[:200]}")
    return found


def gpu_apps() -> str:
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "(no nvidia-smi)"
