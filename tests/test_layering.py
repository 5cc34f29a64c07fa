"""The import layering of DESIGN.md holds: the import-linter contracts in pyproject.toml
([tool.importlinter]) are kept, and they do break when a back-arrow comes in."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter (grimp imports nothing, but finds the packages through sys.path,
# which starts with the working directory), without a cache directory left behind.
LINT = (
    "from importlinter.cli import lint_imports; "
    "raise SystemExit(lint_imports(config_filename='pyproject.toml', no_cache=True))"
)


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    # COLUMNS: one report line per contract (rich wraps at 80 columns otherwise).
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", LINT], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_layering_contracts_are_kept():
    # Not skipped when missing: the layering check must not vanish from CI unnoticed.
    assert importlib.util.find_spec("importlinter"), "pip install -e '.[test]' (import-linter)"
    proc = lint_imports(ROOT)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"lint-imports found imports against the layering:\n{report}"
    assert "0 broken" in report, report


@pytest.mark.parametrize(
    "module, statement, contract",
    [
        # the back-arrow config.py had: configs -> the algorithm registry
        ("asyncrl.configs.config", "from asyncrl.algos import ALGOS", "configs never import"),
        # the one runtime/cli.py had; the layers allow runtime -> configs, the forbidden one not
        (
            "asyncrl.runtime.protocol",
            "from asyncrl.configs.config import ConfigError",
            "the runtime",
        ),
        ("asyncrl.runners.train", "import workers.sampler", "asyncrl never imports workers"),
        ("asyncrl.replay.uniform", "from asyncrl.algos import ALGOS", "asyncrl's layers"),
    ],
)
def test_a_back_arrow_inside_a_function_breaks_its_contract(tmp_path, module, statement, contract):
    """The same contracts on a copy of the tree with one import added inside a function (as
    config.py's ALGOS lookups were): the linter fails, names the contract and the import."""
    for package in ("asyncrl", "workers"):
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(ROOT / package, tmp_path / package, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / (module.replace(".", "/") + ".py")
    path.write_text(path.read_text() + f"\n\ndef _back_arrow():\n    {statement}\n")

    proc = lint_imports(tmp_path)
    report = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"{module}: {statement!r} went unnoticed:\n{report}"
    assert any(
        line.startswith(contract) and line.endswith(" BROKEN") for line in report.splitlines()
    ), report
    imported = statement.split()[1]
    assert f"{module} -> {imported}" in report, report
