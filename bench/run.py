"""Run every benchmark in bench/ (or those named): `make bench` or `make bench ARGS="slice"`.

Each benchmark prints its figure beside the naive baseline it replaces, measured in the same run,
and the command line that reproduces it.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(HERE))
    names = argv or sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    for name in names:
        module = importlib.import_module(f"bench_{name}")
        print(f"\n=== {name}: {module.__doc__.strip().splitlines()[0] if module.__doc__ else ''}")
        print(f'command: make bench ARGS="{name}"')
        module.main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
