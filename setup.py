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
    """Every folder under a root is a package: those with ``__init__.py`` hold code, the
    others only data (``collector/otelcol``, ``collector/proto``) that ``package-data`` in
    pyproject.toml ships — listed here too, so setuptools does not warn that an importable
    folder is absent from ``packages``."""
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for name, folder in ROOTS.items():
        package_dir[name] = folder
        for path in sorted([Path(folder), *Path(folder).rglob("*")]):
            rel = path.relative_to(folder).parts
            if path.is_dir() and not any(p.startswith((".", "__")) for p in rel):
                packages.append(".".join((name, *rel)))
    return packages, package_dir


packages, package_dir = _packages()
setup(packages=packages, package_dir=package_dir)
