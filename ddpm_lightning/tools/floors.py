"""`python -m ddpm_lightning.tools.floors --dataset mnist`: the FLD and KID of real training
images against the test set, with the shipped LeNet, at n = 1,000, 2,000, 5,000 and 10,000
(several draws each), written to `ddpm_lightning/assets/floors_<dataset>.json`, which
`ddpm_lightning.evaluation.floors.floor_for` reads to put a model's figures beside them.

FLD is scored against the shipped test-set statistics, as `evaluate` scores samples; KID
against the whole test set. Reads the data from --root, else $DDPM_DATA_DIR, else data/.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from ddpm_lightning.data.registry import DATASETS
from ddpm_lightning.errors import report_errors
from ddpm_lightning.evaluation.fld import lenet_identity, load_lenet, load_test_statistics
from ddpm_lightning.evaluation.floors import (
    FLOOR_SIZES,
    floors_path,
    mean_sd,
    measure_floors,
    real_images,
    write_floors,
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ddpm_lightning.tools.floors", description=__doc__
    )
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="mnist")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(FLOOR_SIZES), help="images per draw"
    )
    parser.add_argument("--draws", type=int, default=5, help="draws per size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", help="folder holding MNIST/raw and FashionMNIST/raw")
    parser.add_argument("--out", type=Path, help="the JSON to write (default: the assets)")
    return parser.parse_args(argv)


@report_errors
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    lenet = load_lenet(args.dataset)
    floors = measure_floors(
        lenet,
        real_images(args.dataset, train=True, root=args.root),
        real_images(args.dataset, train=False, root=args.root),
        reference=load_test_statistics(args.dataset),
        sizes=args.sizes,
        draws=args.draws,
        seed=args.seed,
    )
    out = args.out or floors_path(args.dataset)
    write_floors(out, args.dataset, lenet_identity(args.dataset), args.draws, floors)
    for n, values in floors.items():
        (fld, fld_sd), (kid, kid_sd) = mean_sd(values["fld"]), mean_sd(values["kid"])
        print(f"n={int(n):>6,}  FLD {fld:.3f} ± {fld_sd:.3f}  KID {kid:.5f} ± {kid_sd:.5f}")
    print(f"wrote {out} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
