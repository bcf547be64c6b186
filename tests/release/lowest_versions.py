"""``make test-lowest``: check that the throwaway venv holds the built wheel at its floors.

Run with the lowest venv's Python. Prints each direct requirement (extras ``emulator`` and
``testing`` included) with its floor and the installed version, and exits 1 if any installed
version is not its floor (then the floor is not what was tested) or if the package is imported
from anywhere but the venv's site-packages (then the wheel is not what was tested).
"""

from __future__ import annotations

import sys
from importlib.metadata import distribution, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

DIST = "airflow-provider-imagegen"
EXTRAS = ("emulator", "testing")


def main() -> int:
    """Print the floors and installed versions; 0 when every one matches."""
    import airflow_provider_imagegen

    problems = []
    location = Path(airflow_provider_imagegen.__file__).resolve()
    if not location.is_relative_to(Path(sys.prefix).resolve()):
        problems.append(f"{DIST} is imported from {location}, not from the venv {sys.prefix}")
    print(f"{DIST} {version(DIST)} from {location.parent}")
    for requirement in map(Requirement, distribution(DIST).requires or []):
        marker = requirement.marker
        if marker is not None and not any(marker.evaluate({"extra": extra}) for extra in ("", *EXTRAS)):
            continue
        floors = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        installed = version(requirement.name)
        floor = floors[0] if floors else "-"
        status = "ok" if floors and Version(installed) == Version(floor) else "NOT THE FLOOR"
        print(f"  {requirement.name:<36} floor {floor:<10} installed {installed:<10} {status}")
        if status != "ok":
            problems.append(f"{requirement.name} {installed} is not its floor {floor}")
    for problem in problems:
        print(f"lowest_versions: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
