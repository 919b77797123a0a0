"""Pin what a fresh install resolves: requirements/constraints.txt, from a venv the tests passed in.

    .venv/bin/python scripts/lock.py           # after a green suite in a full install: rewrite it
    .venv/bin/python scripts/lock.py --check   # CI: every package installed here is pinned there

scripts/setup.sh installs through it (``pip install -c requirements/constraints.txt``), on Linux
and macOS alike: a constraint pins a version without asking for the package, so what only one
platform needs installs only there. An upgrade is a deliberate commit of that file. Local version
labels (``torch 2.13.0+cpu``) are dropped: ``==2.13.0`` admits each platform's build of it.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

LOCKFILE = Path(__file__).resolve().parent.parent / "requirements" / "constraints.txt"
PROJECT = "orchestrate-sd"
# Installed in every venv by venv or pip themselves, and needed by builds in their own
# environments: pinning them could only conflict with a build's requirements.
UNPINNED = {"setuptools", "wheel"}
# Builds for one platform only: a lock holding them could not install on a Mac.
PLATFORM_ONLY = re.compile(r"^(nvidia-.*|triton|pytorch-triton.*|cuda-.*)$")
HEADER = """\
# Versions the test suite passed with: `pip install -c requirements/constraints.txt ...`
# (scripts/setup.sh does). Written by scripts/lock.py from a full install; do not edit by hand.
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(python: str = sys.executable) -> dict[str, tuple[str, str]]:
    """Canonical name -> (name as spelled, version) of every package in ``python``'s venv."""
    text = subprocess.run(
        [python, "-m", "pip", "freeze", "--all", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-e ")):
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise SystemExit(
                f"lock: pip freeze gave {line!r}, not NAME==VERSION: install it from an index"
            )
        found[canonical(name)] = (name, version.split("+", 1)[0])
    return found


def lock_text(packages: dict[str, tuple[str, str]]) -> str:
    foreign = sorted(n for n in packages if PLATFORM_ONLY.match(n))
    if foreign:
        raise SystemExit(
            f"lock: this venv holds builds for one platform only ({', '.join(foreign)}): "
            "lock from a CPU install (scripts/setup.sh installs torch's CPU build first)"
        )
    keep = sorted(k for k in packages if k not in UNPINNED and k != PROJECT)
    return HEADER + "".join(f"{packages[k][0]}=={packages[k][1]}\n" for k in keep)


def pinned(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[canonical(name)] = version
    return out


def check(packages: dict[str, tuple[str, str]], lock: Path) -> list[str]:
    """What this venv holds that the lockfile does not pin at the same version."""
    pins = pinned(lock.read_text(encoding="utf-8"))
    problems = []
    for key, (name, version) in sorted(packages.items()):
        if key in UNPINNED or key == PROJECT:
            continue
        if key not in pins:
            problems.append(f"{name} {version} is installed but not pinned")
        elif pins[key] != version:
            problems.append(f"{name} is {version} here but pinned at {pins[key]}")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare, do not write")
    ap.add_argument("--lockfile", type=Path, default=LOCKFILE)
    args = ap.parse_args()
    packages = installed()
    if args.check:
        problems = check(packages, args.lockfile)
        for p in problems:
            print(f"{args.lockfile.name}: {p}", file=sys.stderr)
        if problems:
            raise SystemExit(
                f"{args.lockfile} does not pin this venv: upgrade deliberately and run scripts/lock.py"
            )
        return
    text = lock_text(packages)
    args.lockfile.parent.mkdir(parents=True, exist_ok=True)
    args.lockfile.write_text(text, encoding="utf-8")
    print(f"{args.lockfile}: {text.count(chr(10)) - HEADER.count(chr(10))} packages pinned")


if __name__ == "__main__":
    main()
