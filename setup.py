"""Maps the top-level folders onto the ``meterline.*`` namespace.

The repository's layout follows the data path (``instrumentation/`` →
``collector/`` → ``aggregator/``) while the importable names live under one
namespace; setuptools' find cannot remap folders, so the packages are listed here.
"""

from pathlib import Path

from setuptools import setup

ROOTS = {
    "meterline": "meterline",
    "meterline.instrumentation": "instrumentation",
    "meterline.collector": "collector",
    "meterline.aggregator": "aggregator",
}


def _packages() -> tuple[list[str], dict[str, str]]:
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for name, folder in ROOTS.items():
        package_dir[name] = folder
        for init in sorted(Path(folder).rglob("__init__.py")):
            rel = init.parent.relative_to(folder).parts
            packages.append(".".join((name, *rel)))
    return packages, package_dir


packages, package_dir = _packages()
setup(packages=packages, package_dir=package_dir)
