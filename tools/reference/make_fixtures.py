"""Makes every parity fixture under fixtures/. Usage: make_fixtures.py [PART ...]"""

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

PARTS_DIR = Path(__file__).resolve().parent / "parts"


def main() -> None:
    available = sorted(p.stem for p in PARTS_DIR.glob("*.py") if not p.stem.startswith("_"))
    wanted = sys.argv[1:] or available
    for name in wanted:
        if name not in available:
            raise SystemExit(f"unknown part {name!r}; parts: {', '.join(available)}")
    for name in wanted:
        print(f"== {name}", flush=True)
        module = importlib.import_module(f"parts.{name}")
        module.make(common.FIXTURES)


if __name__ == "__main__":
    main()
