"""The ``baselines`` extra: ``schedule-free`` and ``pbt`` without their packages are one line, exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hpo.cli import cli
from hpo.runtime.extras import MissingExtra, installed, require

FIXTURES = Path(__file__).parent / "conftest.py"
TASK = f"{FIXTURES}:tiny_task"


@pytest.mark.parametrize("method, module, what", [("pbt", "ray", "Ray Tune"),
                                                  ("schedule-free", "schedulefree", "schedulefree")])
def test_a_method_without_its_extra_is_one_line_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           method: str, module: str, what: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: `import module` fails
    r = CliRunner().invoke(cli, ["compare", "--task", TASK, "--methods", f"random-constant,{method}", "--budget", "8",
                                 "--inner-steps", "4", "--counts", "lr=2", "--logdir", str(tmp_path / "x")])
    assert r.exit_code == 2
    assert r.output == f"Error: Invalid value for '--methods': {method} needs {what}: pip install -e '.[baselines]'\n"
    assert not (tmp_path / "x").exists()


def test_require_finds_installed_packages_without_importing_them(monkeypatch: pytest.MonkeyPatch) -> None:
    assert installed("torch") and not installed("no_such_package_hpo")
    require("torch", "torch")
    with pytest.raises(MissingExtra, match=r"needs Nothing: pip install -e '\.\[baselines\]'"):
        require("no_such_package_hpo", "Nothing")
    monkeypatch.setitem(sys.modules, "torch_not_here", None)
    assert not installed("torch_not_here")


def test_importing_hpo_imports_neither_ray_nor_schedulefree() -> None:
    code = ("import sys, hpo, hpo.app.registry, hpo.app.compare, hpo.search.pbt, hpo.search.schedule_free, hpo.search.pbt, "
            "hpo.search.schedule_free\nprint(sorted(m for m in ('ray', 'schedulefree') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "[]", out.stdout
