"""Package hygiene: the core imports neither torch nor sglang; the core is a real build."""

import subprocess
import sys

import l4_sglang


def test_core_import_pulls_no_gpu_stack():
    code = (
        "import sys, l4_sglang, l4_sglang.launch; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'sglang'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_core_reports_its_build():
    assert l4_sglang.BUILD_PROFILE in {"release", "debug"}
    assert l4_sglang.__version__


def test_launch_smoke_test_serves_through_the_router():
    run = subprocess.run(
        [
            sys.executable, "-m", "l4_sglang.launch", "--backend", "emulated", "--num-instances", "2",
            "--port", "0", "--time-scale", "0.05", "--smoke-test",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "EMULATED BACKEND" in run.stderr
    assert "smoke test passed" in run.stdout
