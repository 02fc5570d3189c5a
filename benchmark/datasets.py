"""`python -m benchmark data fetch|list`: every dataset from its official source into the data root
($XKD_DATA, default ~/.cache/xkd-bench/data), verified and converted to what the loaders and tests read.

    cifar100/      cifar-100-python/ (torchvision's download, md5-checked by torchvision) and
                   cifar100_uint8.npz + meta.json (the arrays the tests read)
    tiny-imagenet/ tiny-imagenet-200.zip (CS231n's archive, md5-checked; the loader reads the zip)
    fsdd/          recordings/*.wav + speakers.json (the FSDD repository at tag v1.0.10: 3,000 recordings, 6 speakers)
    faces-orl/     orl_faces_uint8.npz (the ORL/AT&T faces as scikit-learn's Olivetti set, 400 images, 40
                   identities; scikit-learn checks its checksum; stored at 64x64 and resized to 112x92)

Each dataset is written to a temporary folder and moved in only when complete; with no network, one
line names the URL and the layout expected.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from benchmark.registry import UsageError


def data_root() -> Path:
    return Path(os.environ.get("XKD_DATA", Path.home() / ".cache" / "xkd-bench" / "data")).expanduser()


def _folder_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.exists() else 0


def _complete(target: Path, build) -> Path:
    """build(tmp) fills a temporary folder beside target; it replaces target only when build succeeded."""
    created = not target.parent.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial"))
    try:
        build(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(target.parent, ignore_errors=True)
        raise
    return target


def _download(url: str, what: str, layout: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.read()
    except Exception as e:
        raise UsageError(
            f"{what}: cannot download {url} ({type(e).__name__}: {e}); without a network, put {layout} there yourself"
        ) from None


def cmd_data(args) -> int:
    """`data fetch|list`: the datasets the tasks declare (benchmark.registry.DATASETS)."""
    from benchmark.registry import DATASETS

    root = Path(args.root).expanduser() if args.root else data_root()
    if args.action == "list":
        print(f"data root {root}")
        for e in DATASETS.entries():
            name, (_, folder), what = e.name, e.obj, e.description
            p = root / folder
            state = f"{_folder_size(p) / 1e6:8.1f} MB" if p.exists() else "     absent"
            print(f"  {name:13s} {state}  {p}  ({what})")
        return 0
    names = DATASETS.names() if args.name == "all" else [args.name]
    for n in names:
        if n not in DATASETS:
            raise UsageError(f"unknown dataset '{n}'; known: {', '.join(DATASETS.names())}, all")
    for n in names:
        path = DATASETS.get(n)[0](root)
        print(f"{n}: {path} ({_folder_size(path) / 1e6:.1f} MB)")
    return 0
