"""The built wheel is a working kdbench: its recipes are package data (kdbench/recipes/, read with
importlib.resources), so an ordinary (non-editable) install lists and plans the shipped tables from any directory."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from kdbench.recipe import RECIPES_DIR, recipe_files

from venvs import clean_env, fresh_venv, pip_install

ROOT = Path(__file__).resolve().parent.parent


def _build_wheel(tmp_path: Path) -> Path:
    """``pip wheel`` of a copy of the checkout's package sources (building in the checkout would leave build/ and
    egg-info folders there)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "kdbench", src / "kdbench", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
        timeout=600,
        env=clean_env(),
    )
    return next(out.glob("kdbench-*.whl"))


@pytest.mark.e2e
def test_installed_wheel_lists_and_plans_the_shipped_recipes(tmp_path):
    wheel = _build_wheel(tmp_path)
    shipped = {
        f"kdbench/recipes/{p.relative_to(RECIPES_DIR).as_posix()}"
        for p in RECIPES_DIR.rglob("*.yaml")
    }
    assert (
        "kdbench/recipes/catalog.yaml" in shipped and "kdbench/recipes/simkd/table1.yaml" in shipped
    )
    assert shipped <= set(
        zipfile.ZipFile(wheel).namelist()
    )  # every recipe file (and the catalogue) is in the wheel

    venv = fresh_venv(tmp_path / "venv")
    # --ignore-installed: the test environment's own kdbench (seen through the .pth) is neither kept nor uninstalled.
    pip_install(venv, "--ignore-installed", str(wheel))
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(args), cwd=outside, capture_output=True, text=True, env=clean_env(), timeout=600
        )

    site_packages = next((venv / "lib").glob("python*/site-packages"))
    where = run(
        str(venv / "bin" / "python"),
        "-c",
        "import kdbench, kdbench.recipe as r; print(kdbench.__file__); print(r.RECIPES_DIR)",
    )
    assert where.returncode == 0, where.stderr
    module, recipes = where.stdout.split()
    # The installed copy, not this checkout (nor the test environment's install of it).
    assert Path(module) == site_packages / "kdbench" / "__init__.py"
    assert Path(recipes) == site_packages / "kdbench" / "recipes"

    listed = run(str(venv / "bin" / "kdbench"), "list")
    assert listed.returncode == 0, listed.stderr
    missing = [
        name
        for name, path in recipe_files().items()
        if RECIPES_DIR in path.parents and name not in listed.stdout
    ]
    assert not missing, f"kdbench list of the installed wheel lacks {missing}:\n{listed.stdout}"

    dry = run(
        str(venv / "bin" / "kdbench"),
        "reproduce",
        "simkd-table1",
        "--profile",
        "smoke",
        "--dry-run",
        "--results",
        str(outside / "results"),
    )
    assert dry.returncode == 0, f"{dry.stdout}\n{dry.stderr}"
    assert "unknown recipe" not in dry.stdout + dry.stderr
    assert not (outside / "results" / "runs").exists() or not any(
        (outside / "results" / "runs").iterdir()
    )
