"""Fresh virtual environments for the install tests (test_plugins.py, test_wheel.py)."""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

from kdbench.recipe import RECIPES_ENV


def fresh_venv(where: Path) -> Path:
    """A new virtual environment at ``where`` on the test's Python, without its own pip, that sees the test
    environment's packages (torch is not reinstalled). Install into it with :func:`pip_install`."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(where)],
        check=True,
        timeout=300,
    )
    # The test's Python may itself be a virtual environment, whose packages (torch) --system-site-packages does not
    # reach (it reaches the base interpreter's): add its site directories after the new environment's own.
    own = next((where / "lib").glob("python*/site-packages"))
    shared = [p for p in map(Path, site.getsitepackages()) if p.is_dir()]
    (own / "zz_test_environment.pth").write_text(
        "".join(f"import site; site.addsitedir({str(p)!r})\n" for p in shared)
    )
    return where


def pip_install(venv: Path, *args: str) -> None:
    """``pip install --no-deps`` into ``venv`` with the test environment's pip, offline and without build isolation."""
    subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            *args,
        ],
        check=True,
        timeout=600,
        env=clean_env(),
    )


def clean_env() -> dict[str, str]:
    """This process's environment without PYTHONPATH and $KDBENCH_RECIPES, so that a child imports the installed
    kdbench and finds only its recipes."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", RECIPES_ENV)} | {
        "COLUMNS": "250"
    }
