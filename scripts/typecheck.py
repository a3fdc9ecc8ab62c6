#!/usr/bin/env python3
"""Type-check the product code with mypy (configured in pyproject.toml [tool.mypy]); arguments go to mypy.

The folders install as one package through setuptools' package-dir mapping (cli/ is smt_convert, converters/ is
smt_convert.converters, ...). mypy follows neither that mapping nor the editable install's import hook, so this
lays the package out as links under build/typecheck/ (from setup.py's ROOTS: a new folder needs no edit here),
runs mypy on it, and prints the real file names (converters/x.py, not build/typecheck/smt_convert/converters/x.py).
"""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
TREE = Path("build/typecheck")  # pyproject's mypy_path


def roots() -> dict[str, str]:
    """setup.py's ROOTS literal (package name -> folder), read without running setup()."""
    for node in ast.parse((HERE / "setup.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ROOTS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit("setup.py has no ROOTS")


def lay_out(mapping: dict[str, str]) -> dict[str, str]:
    """Links under TREE making each package of mapping its folder; returns linked prefix -> real prefix."""
    shutil.rmtree(TREE / "smt_convert", ignore_errors=True)
    renames = {}
    for name, folder in sorted(mapping.items()):
        link = TREE / name.replace(".", "/")
        if name == "smt_convert":  # the top package is a directory: its subpackages are linked into it
            link.mkdir(parents=True)
            for entry in sorted((HERE / folder).iterdir()):
                if entry.name != "__pycache__":
                    (link / entry.name).symlink_to(entry)
        else:
            link.symlink_to(HERE / folder, target_is_directory=True)
        renames[f"{link}{os.sep}"] = f"{folder}{os.sep}"
    return dict(sorted(renames.items(), key=lambda kv: -len(kv[0])))


def main() -> int:
    os.chdir(HERE)
    renames = lay_out(roots())
    proc = subprocess.Popen([sys.executable, "-m", "mypy", *sys.argv[1:]], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        for linked, real in renames.items():
            if line.startswith(linked):
                line = real + line[len(linked) :]
                break
        sys.stdout.write(line)
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main())
