"""The speaker fixture's sources, fetched from their official homes into the data root (`data fetch fsdd|orl`)."""

from __future__ import annotations

import ast
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np

from benchmark.datasets import _complete, _download
from benchmark.registry import UsageError, register_dataset

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


@register_dataset("fsdd", "fsdd", "Free Spoken Digit Dataset v1.0.10 (speaker fixture speech)")
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
            raise UsageError(
                f"fsdd: {FSDD_URL} holds {len(wavs)} recordings of {sorted(speakers)}; expected 3,000 "
                f"of {', '.join(FSDD_SPEAKERS)} and metadata.py"
            )
        digest = recordings_digest(tmp / "recordings")
        if digest != FSDD_SHA256:
            raise UsageError(
                f"fsdd: the recordings from {FSDD_URL} have sha256 {digest}, expected {FSDD_SHA256} (the v1.0.10 recordings)"
            )
        tree = ast.parse(meta)
        value = next(
            n.value
            for n in ast.walk(tree)
            if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "metadata" for t in n.targets)
        )
        (tmp / "speakers.json").write_text(json.dumps(ast.literal_eval(value), indent=1))

    return _complete(root / "fsdd", build)


@register_dataset("orl", "faces-orl", "ORL/AT&T faces via scikit-learn's Olivetti set (speaker fixture faces)")
def fetch_orl(root: Path) -> Path:
    def build(tmp: Path) -> None:
        try:
            from sklearn.datasets import fetch_olivetti_faces

            faces = fetch_olivetti_faces(data_home=str(tmp / "sklearn"), shuffle=False, download_if_missing=True)
        except Exception as e:
            raise UsageError(
                f"orl: scikit-learn's fetch_olivetti_faces (https://ndownloader.figshare.com/files/"
                f"5976027) failed ({type(e).__name__}: {e}); without a network, put orl_faces_uint8.npz "
                "(images [400, 112, 92] uint8, labels [400] int64) in the folder"
            ) from None
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(faces.images.astype(np.float32))[:, None]
        big = F.interpolate(x, size=(112, 92), mode="bilinear", align_corners=False)[:, 0]
        images = (big.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        np.savez(tmp / "orl_faces_uint8.npz", images=images, labels=faces.target.astype(np.int64))
        shutil.rmtree(tmp / "sklearn")

    return _complete(root / "faces-orl", build)
