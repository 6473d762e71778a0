"""Pixel differences between PNG files of the same name in two folders.

    python3 compare_png.py LABEL DIR_A DIR_B

Prints, per image, the max and mean absolute difference (0..255, over all channels), and
whether it is within the end-to-end test's bound (per channel max <= 2, mean <= 0.02).
Needs numpy and Pillow.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> int:
    label, dir_a, dir_b = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    worst_max, worst_mean, failed, count = 0.0, 0.0, 0, 0
    for a in sorted(dir_a.glob("*.png")):
        b = dir_b / a.name
        if not b.exists():
            print(f"{label} {a.name}: missing in {dir_b}")
            failed += 1
            continue
        x = np.asarray(Image.open(a).convert("RGB"), dtype=np.float64)
        y = np.asarray(Image.open(b).convert("RGB"), dtype=np.float64)
        if x.shape != y.shape:
            print(f"{label} {a.name}: shapes {x.shape} vs {y.shape}")
            failed += 1
            continue
        d = np.abs(x - y)
        per_max = d.max(axis=(0, 1))
        per_mean = d.mean(axis=(0, 1))
        ok = bool((per_max <= 2).all() and (per_mean <= 0.02).all())
        failed += not ok
        count += 1
        worst_max, worst_mean = max(worst_max, d.max()), max(worst_mean, d.mean())
        print(f"{label} {a.name}: max {d.max():.0f} mean {d.mean():.5f} {'ok' if ok else 'OVER'}")
    print(f"{label}: {count} images, worst max {worst_max:.0f}, worst mean {worst_mean:.5f}, "
          f"{failed} over the bound")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
