"""The layers: import-linter's contracts hold (one-way layers, no sibling cycles, a NumPy-only core), and the
public names of the contract still resolve to the code that moved."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lint_imports():
    exe = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is not installed (it is part of rnnbench[dev]); the layer check cannot run")
    return exe


def test_import_linter_contracts_hold():
    r = subprocess.run([_lint_imports()], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    for name in ("one-way layers", "no cycles between the packages of a layer",
                 "the core needs only the standard library and NumPy"):
        assert f"{name} KEPT" in r.stdout, r.stdout[-3000:]


def test_a_wrong_way_import_breaks_the_contract(tmp_path):
    """The check can fail: a copy of the tree where the core imports the runner is rejected."""
    dst = tmp_path / "tree"
    shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(".venv", ".git", "results", "__pycache__", "*.egg-info",
                                                           ".hypothesis", ".pytest_cache", ".asv"))
    with open(dst / "harness" / "core" / "spec.py", "a") as f:
        f.write("\nfrom harness.run import runner as _wrong_way  # noqa\n")
    env = dict(os.environ, PYTHONPATH=str(dst))
    r = subprocess.run([_lint_imports()], cwd=dst, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode != 0
    assert "one-way layers BROKEN" in r.stdout
    assert "harness.core.spec -> harness.run" in r.stdout


def test_public_names_are_the_moved_modules():
    import harness.backends
    import harness.core.params
    import harness.core.spec
    import harness.measure.records
    import harness.params
    import harness.records
    import harness.spec
    import implementations.registry
    assert harness.spec is harness.core.spec and harness.params is harness.core.params
    assert harness.backends is implementations.registry and harness.records is harness.measure.records
    from harness.backends import available, get  # noqa: F401
    from harness.params import init_params  # noqa: F401
    from harness.records import load  # noqa: F401
    from harness.spec import CellSpec  # noqa: F401
    from implementations.base import BackendBase
    for hook in ("_forward", "_vjp", "_hidden_grads", "_ctc", "_prepare_forward", "_prepare_train"):
        assert callable(getattr(BackendBase, hook))
