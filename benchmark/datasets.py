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

import ast
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from benchmark.registry import UsageError

FSDD_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.tar.gz"
FSDD_SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
# GitHub regenerates tag archives (their bytes, hence an archive checksum, are not stable), so the content is
# checked: sha256 over the recordings in name order (name, NUL, 8-byte little-endian length, bytes). Computed
# from the v1.0.10 tree, whose 3,000 recordings are byte-identical to the repository's current ones.
FSDD_SHA256 = "2f17dea19a57e5b41c96377cc76619e34da46105a595ef978b7d26466f8a9689"


def recordings_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.glob("*.wav"), key=lambda p: p.name):
        data = p.read_bytes()
        h.update(p.name.encode() + b"\0" + len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


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
        raise UsageError(f"{what}: cannot download {url} ({type(e).__name__}: {e}); without a network, put "
                         f"{layout} there yourself") from None


def fetch_cifar100(root: Path) -> Path:
    from tasks.cifar100 import _read_torchvision, read_cifar100

    def build(tmp: Path) -> None:
        try:
            from torchvision.datasets import CIFAR100
            CIFAR100(str(tmp), train=True, download=True)  # downloads and md5-checks the archive
        except Exception as e:
            raise UsageError(f"cifar100: the torchvision download (https://www.cs.toronto.edu/~kriz/"
                             f"cifar-100-python.tar.gz) failed ({type(e).__name__}: {e}); without a network, put "
                             "cifar-100-python/ or cifar100_uint8.npz + meta.json in the folder") from None
        (tmp / "cifar-100-python.tar.gz").unlink(missing_ok=True)
        xtr, ytr, xte, yte, names, f2c, coarse, _ = _read_torchvision(tmp)
        np.savez(tmp / "cifar100_uint8.npz", x_train=xtr, y_train=ytr.astype(np.int64), x_test=xte,
                 y_test=yte.astype(np.int64), fine_to_coarse=f2c)
        (tmp / "meta.json").write_text(json.dumps({"fine_label_names": list(names), "coarse_label_names": list(coarse),
                                                   "fine_to_coarse": f2c.tolist()}))
        read_cifar100(str(tmp))  # what the loader reads, checked
    return _complete(root / "cifar100", build)


def fetch_tinyimagenet(root: Path) -> Path:
    from tasks.tinyimagenet import download
    return _complete(root / "tiny-imagenet", download)  # md5 and every member's CRC checked


def fetch_fsdd(root: Path) -> Path:
    def build(tmp: Path) -> None:
        raw = _download(FSDD_URL, "fsdd", "recordings/<digit>_<speaker>_<index>.wav and speakers.json")
        (tmp / "recordings").mkdir()
        meta = None
        try:
            with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
                for m in tar.getmembers():
                    name = m.name.split("/", 1)[-1]
                    if m.isfile() and name.startswith("recordings/") and name.endswith(".wav") and "/" not in name[11:]:
                        (tmp / name).write_bytes(tar.extractfile(m).read())
                    elif m.isfile() and name == "metadata.py":
                        meta = tar.extractfile(m).read().decode()
        except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as e:  # truncated or corrupt download
            raise UsageError(f"fsdd: the archive from {FSDD_URL} cannot be read ({type(e).__name__}: {e})") from None
        wavs = list((tmp / "recordings").glob("*.wav"))
        speakers = {w.name.split("_")[1] for w in wavs}
        if len(wavs) < 3000 or not set(FSDD_SPEAKERS) <= speakers or meta is None:
            raise UsageError(f"fsdd: {FSDD_URL} holds {len(wavs)} recordings of {sorted(speakers)}; expected 3,000 "
                             f"of {', '.join(FSDD_SPEAKERS)} and metadata.py")
        digest = recordings_digest(tmp / "recordings")
        if digest != FSDD_SHA256:
            raise UsageError(f"fsdd: the recordings from {FSDD_URL} have sha256 {digest}, expected {FSDD_SHA256} "
                             "(the v1.0.10 recordings)")
        tree = ast.parse(meta)
        value = next(n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                     and any(getattr(t, "id", "") == "metadata" for t in n.targets))
        (tmp / "speakers.json").write_text(json.dumps(ast.literal_eval(value), indent=1))
    return _complete(root / "fsdd", build)


def fetch_orl(root: Path) -> Path:
    def build(tmp: Path) -> None:
        try:
            from sklearn.datasets import fetch_olivetti_faces
            faces = fetch_olivetti_faces(data_home=str(tmp / "sklearn"), shuffle=False, download_if_missing=True)
        except Exception as e:
            raise UsageError(f"orl: scikit-learn's fetch_olivetti_faces (https://ndownloader.figshare.com/files/"
                             f"5976027) failed ({type(e).__name__}: {e}); without a network, put orl_faces_uint8.npz "
                             "(images [400, 112, 92] uint8, labels [400] int64) in the folder") from None
        import torch
        import torch.nn.functional as F
        x = torch.from_numpy(faces.images.astype(np.float32))[:, None]
        big = F.interpolate(x, size=(112, 92), mode="bilinear", align_corners=False)[:, 0]
        images = (big.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        np.savez(tmp / "orl_faces_uint8.npz", images=images, labels=faces.target.astype(np.int64))
        shutil.rmtree(tmp / "sklearn")
    return _complete(root / "faces-orl", build)


DATASETS = {
    "cifar100": (fetch_cifar100, "cifar100", "CIFAR-100, official split (torchvision)"),
    "tinyimagenet": (fetch_tinyimagenet, "tiny-imagenet", "Tiny-ImageNet 200 (CS231n archive)"),
    "fsdd": (fetch_fsdd, "fsdd", "Free Spoken Digit Dataset v1.0.10 (speaker fixture speech)"),
    "orl": (fetch_orl, "faces-orl", "ORL/AT&T faces via scikit-learn's Olivetti set (speaker fixture faces)"),
}


def cmd_data(args) -> int:
    root = Path(args.root).expanduser() if args.root else data_root()
    if args.action == "list":
        print(f"data root {root}")
        for name, (_, folder, what) in DATASETS.items():
            p = root / folder
            state = f"{_folder_size(p) / 1e6:8.1f} MB" if p.exists() else "     absent"
            print(f"  {name:13s} {state}  {p}  ({what})")
        return 0
    names = list(DATASETS) if args.name == "all" else [args.name]
    for n in names:
        if n not in DATASETS:
            raise UsageError(f"unknown dataset '{n}'; known: {', '.join(DATASETS)}, all")
    for n in names:
        path = DATASETS[n][0](root)
        print(f"{n}: {path} ({_folder_size(path) / 1e6:.1f} MB)")
    return 0
