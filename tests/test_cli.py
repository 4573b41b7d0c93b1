"""The CLI surface: --help and `import harness` with NumPy only, `list`, and usage errors (exit 2)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("torch", "jax", "jaxlib", "optax", "flax", "pandas", "matplotlib", "scipy")

# A meta-path hook that makes the heavy frameworks un-importable, as on a machine with only NumPy.
BLOCK = f"""
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {HEAVY!r}:
            raise ImportError('blocked for the test: ' + name)
sys.meta_path.insert(0, _Block())
"""


def _run(code: str, *args: str, block: bool = True):
    prog = (BLOCK if block else "import sys\n") + code
    return subprocess.run([sys.executable, "-c", prog, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_import_harness_and_help_need_only_numpy():
    r = _run("import harness, harness.spec, harness.params, harness.backends, harness.records, harness.cli\n"
             "import harness.core.spec, harness.core.cells, harness.core.system, implementations.registry\n"
             "import suites, suites.base, suites.throughput, suites.memory, suites.gradients, suites.ctc\n"
             "import harness.measure.timing, harness.run.runner, harness.compare, harness.gate, harness.report\n"
             "from harness.cli.main import main\n"
             "sys.exit(main(['--help']))")
    assert r.returncode == 0, r.stderr
    assert "rnnbench list" in r.stdout and "rnnbench run" in r.stdout
    for sub in ("run", "report", "compare", "gate", "list"):
        r = _run("from harness.cli.main import main\nsys.exit(main([sys.argv[1], '--help']))", sub)
        assert r.returncode == 0, (sub, r.stderr)
        assert "usage: rnnbench " + sub in r.stdout


def test_suite_modules_import_with_numpy_only():
    r = _run("import importlib, suites.base\n"
             "for name in suites.base.existing_suites():\n"
             "    importlib.import_module(suites.base.SUITE_MODULES[name])\n"
             "print('ok')")
    assert r.returncode == 0, r.stderr


def test_list_reports_missing_frameworks_with_reason():
    r = _run("from harness.cli.main import main\nsys.exit(main(['list']))")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(l.split()[:3] == ["numpy", "cpu", "yes"] for l in lines)
    torch_cpu = [l for l in lines if l.split()[:2] == ["torch", "cpu"]][0]
    assert "no" in torch_cpu.split()[2] and "not installed" in torch_cpu and "rnnbench[torch]" in torch_cpu


def test_list_with_frameworks_installed():
    pytest.importorskip("torch")
    r = _run("from harness.cli.main import main\nsys.exit(main(['list', '--device', 'cpu']))", block=False)
    assert r.returncode == 0, r.stderr
    assert any(l.split()[:3] == ["torch", "cpu", "yes"] for l in r.stdout.splitlines()), r.stdout


@pytest.mark.parametrize("argv,needle", [
    (["list", "--device", "tpu"], "--device: got 'tpu'"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_exit_2_with_one_line(argv, needle):
    r = _run("from harness.cli.main import main\nsys.exit(main(sys.argv[1:]))", *argv)
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr


def test_no_command_prints_help_and_exits_2():
    r = _run("from harness.cli.main import main\nsys.exit(main([]))")
    assert r.returncode == 2 and "usage: rnnbench" in r.stdout
