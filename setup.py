"""Package discovery for the one `smt_convert` namespace (everything else about the package is in pyproject.toml).

The top-level folders install as `smt_convert.<folder>` (cli/ is `smt_convert` itself). Every folder with an
`__init__.py` below them is a package, found here rather than listed by hand, so a new family under archs/ is in
the wheel without anyone remembering to add it (tests/test_packaging.py builds one to check).
"""

from pathlib import Path

from setuptools import setup

ROOTS = {"smt_convert": "cli", "smt_convert.archs": "archs", "smt_convert.converters": "converters",
         "smt_convert.runtime": "runtime", "smt_convert.testing": "testing"}


def discover_packages() -> list[str]:
    here = Path(__file__).resolve().parent
    packages = []
    for name, folder in ROOTS.items():
        root = here / folder
        for init in sorted(root.rglob("__init__.py")):
            packages.append(".".join([name, *init.parent.relative_to(root).parts]))
    return packages


# data the code reads at run time: the golden inputs (converters/golden_inputs.py)
PACKAGE_DATA = {"smt_convert.converters": ["goldens/*.wav", "goldens/*.png", "goldens/*.txt"]}

setup(packages=discover_packages(), package_dir=ROOTS, package_data=PACKAGE_DATA)
