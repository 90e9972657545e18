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


def test_launch_says_it_does_not_serve_yet():
    run = subprocess.run(
        [sys.executable, "-m", "l4_sglang.launch", "--num-instances", "2"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "NOT SERVING YET" in run.stderr
    assert "instance(s)" in run.stdout
