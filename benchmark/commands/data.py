"""`data` (fetch the datasets the tasks declare, or list them) and `fixture` (the small real speaker fixture)."""

from __future__ import annotations

from pathlib import Path

from benchmark.registry import DATASETS


def cmd_data(args) -> int:
    from benchmark.datasets import cmd_data as data

    return data(args)


def cmd_fixture(args) -> int:
    from benchmark.datasets import data_root
    from benchmark.registry import FIXTURES

    sources = Path(args.shared_data) if args.shared_data else data_root()
    path = FIXTURES.get(args.which)(sources, Path(args.out), Path(args.noise_dir) if args.noise_dir else None)
    print(f"fixture written to {path} (no cross-modal signal: faces and voices are paired arbitrarily)")
    return 0


def add(sub) -> None:
    from benchmark.manifest import known

    p = sub.add_parser("data", help="fetch datasets from their official sources into the data root, or list them")
    p.add_argument("action", choices=["fetch", "list"], help="fetch a dataset (or all) into the data root, or list them")
    p.add_argument("name", nargs="?", default="all", choices=[*known(DATASETS), "all"], help="dataset (fetch; default all)")
    p.add_argument("--root", help="data root (default $XKD_DATA or ~/.cache/xkd-bench/data)")
    p.set_defaults(fn=cmd_data, interrupted="the download stopped; nothing half-written is kept: run it again")
    f = sub.add_parser("fixture", help="build the small real speaker fixture (FSDD + ORL + sonic-pi noise)")
    from benchmark.registry import FIXTURES

    f.add_argument("which", choices=known(FIXTURES), help="which fixture")
    f.add_argument("--out", required=True, help="folder to write the fixture to")
    f.add_argument(
        "--shared-data",
        dest="shared_data",
        help="folder holding fsdd/ and faces-orl/ (default: the "
        "data root that `data fetch fsdd orl` fills, $XKD_DATA or ~/.cache/xkd-bench/data)",
    )
    f.add_argument("--noise-dir", dest="noise_dir", help="noise recordings (default: the sonic-pi-samples loops)")
    f.set_defaults(fn=cmd_fixture, interrupted="the fixture was not finished: run it again")
