"""Checks that the venv's torch is the release tch 0.24 is built for; prints the fix if not."""
import sys
from importlib.metadata import PackageNotFoundError, version

EXPECTED = "2.11.0"
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
