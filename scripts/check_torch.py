"""Checks that the venv's torch is the release tch 0.24 is built for; prints the fix if not.

The release is the `torch==X` line of weights/requirements.txt, the project's one torch pin.
"""
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent.parent / "weights" / "requirements.txt"


def torch_pin():
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("torch=="):
            return line[len("torch=="):].strip()
    sys.exit(f"{REQUIREMENTS} has no `torch==X` line")


EXPECTED = torch_pin()
try:
    found_full = version("torch")
except PackageNotFoundError:
    sys.exit("torch is not installed in .venv; run `make setup`")
found = found_full.split("+")[0]
if found != EXPECTED:
    sys.exit(
        f".venv has torch {found_full}, but tch 0.24 needs torch {EXPECTED}; "
        "run `make setup` (weights/requirements.txt pins it)"
    )
