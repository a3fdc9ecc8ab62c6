"""The wheel holds every package, found by setup.py rather than listed by hand: including a family added after
the fact (issue 19: a wheel built after adding archs/newfamily/ silently lacked it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"cli": "smt_convert", "archs": "smt_convert/archs", "converters": "smt_convert/converters",
           "runtime": "smt_convert/runtime", "testing": "smt_convert/testing"}


def build_wheel(tree: Path, out: Path) -> set[str]:
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(tree),
                           "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = out.glob("*.whl")
    return {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}


def expected_packages(tree: Path) -> set[str]:
    return {f"{FOLDERS[folder]}/{init.parent.relative_to(tree / folder).as_posix()}".rstrip("/.")
            for folder in FOLDERS for init in (tree / folder).rglob("__init__.py")}


@pytest.mark.slow
def test_the_wheel_holds_every_package_and_a_new_family(tmp_path):
    tree = tmp_path / "src"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".git", "*.egg-info", "build", "__pycache__"))
    family = tree / "archs" / "newfamily"   # what a contributor adds: a package, no other file touched
    family.mkdir()
    (family / "__init__.py").write_text("")
    (family / "plugin.py").write_text("NAME = 'newfamily'\n")
    names = build_wheel(tree, tmp_path / "wheel")
    packages = {n.rsplit("/", 1)[0] for n in names}
    assert expected_packages(tree) <= packages, expected_packages(tree) - packages
    assert "smt_convert/archs/newfamily/plugin.py" in names
    for family_dir in (ROOT / "archs").iterdir():
        if (family_dir / "__init__.py").is_file():
            assert f"smt_convert/archs/{family_dir.name}/plugin.py" in names
