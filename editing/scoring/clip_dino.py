"""Edit metrics for real checkpoints, from weights the user keeps on disk (never downloaded).

- :class:`ClipMetrics` (a transformers CLIP folder: ``CLIPModel`` + ``CLIPProcessor``):
  **CLIP score** ``100 · max(cos(E_I(image), E_T(text)), 0)`` (Hessel et al. 2021, as
  torchmetrics reports it) and **CLIP directional similarity**
  ``cos(E_I(edit) − E_I(source), E_T(target) − E_T(source))`` (Gal et al. 2021, the paper's CDS).
- :class:`DinoStructure` (a transformers ViT or DINOv2 folder): **structure distance** = mean
  squared difference of the self-similarity matrices of the last layer's keys
  (Tumanyan et al., Splice 2022; the structure metric of Plug-and-Play), and the CLS-token
  cosine distance as a coarser alternative.
- LPIPS needs pretrained VGG/AlexNet weights and a learned calibration that attnprobe does not
  ship; use :func:`editing.scoring.images.psnr` and :func:`editing.scoring.images.ssim`
  instead.

Save the folders once on a machine with internet, e.g.
``CLIPModel.from_pretrained("openai/clip-vit-large-patch14").save_pretrained("clip")`` and the
same for its ``CLIPProcessor``; ``AutoModel``/``AutoImageProcessor`` of ``facebook/dino-vitb8``.

    clip = ClipMetrics("~/weights/clip-vit-l14")
    clip.score([result.targets[0]], ["a blue car"])
    clip.directional_similarity([result.source], [result.targets[0]], ["a red car"], ["a blue car"])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from editing.scoring.images import ImageLike, to_array

HOW_TO_SAVE = (
    "attnprobe never downloads weights: on a machine with internet, load the model and its "
    "processor with from_pretrained(...) and save both with save_pretrained(<folder>)"
)


def _folder(path: str | Path, what: str) -> Path:
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a {what} folder (no config.json). {HOW_TO_SAVE}")
    return folder


def _pil(images: Sequence[ImageLike]) -> list[Image.Image]:
    if isinstance(images, (Image.Image, str)):
        raise ValueError("pass a list of images, e.g. [image]")
    return [Image.fromarray(to_array(image)) for image in images]


def _check_lengths(**lists: Sequence[Any]) -> None:
    sizes = {name: len(items) for name, items in lists.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"inputs must have the same length, got {sizes}")


class ClipMetrics:
    """CLIP score and CLIP directional similarity from a local CLIP folder.

    Args:
        folder: a transformers CLIP folder with ``config.json``, the weights and the processor
            (tokenizer + image processor).
        device: where to run the model.

    Raises:
        FileNotFoundError: the folder is missing or is not a saved model.

    Example:
        >>> clip = ClipMetrics("weights/clip")
        >>> clip.score([image], ["a blue car"])
        [27.3]
    """

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu") -> None:
        from transformers import CLIPModel, CLIPProcessor

        path = _folder(folder, "CLIP")
        self.device = torch.device(device)
        self.model = CLIPModel.from_pretrained(str(path), local_files_only=True).to(self.device)
        self.model.eval()
        self.processor = CLIPProcessor.from_pretrained(str(path), local_files_only=True)

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[ImageLike]) -> Tensor:
        """Unit-norm image embeddings ``[n, projection_dim]``."""
        pixels = self.processor(images=_pil(images), return_tensors="pt")["pixel_values"]
        out = self.model.vision_model(pixel_values=pixels.to(self.device))
        return nn.functional.normalize(self.model.visual_projection(out.pooler_output), dim=-1)

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> Tensor:
        """Unit-norm text embeddings ``[n, projection_dim]`` (prompts truncated to the model's
        length, as CLIP score does)."""
        if isinstance(texts, str):
            raise ValueError(f"pass a list of prompts, e.g. [{texts!r}]")
        tokens = self.processor(
            text=list(texts), return_tensors="pt", padding=True, truncation=True
        )
        out = self.model.text_model(
            input_ids=tokens["input_ids"].to(self.device),
            attention_mask=tokens["attention_mask"].to(self.device),
        )
        return nn.functional.normalize(self.model.text_projection(out.pooler_output), dim=-1)

    def score(self, images: Sequence[ImageLike], texts: Sequence[str]) -> list[float]:
        """CLIP score per (image, text): ``100 · max(cosine, 0)``.

        Raises:
            ValueError: ``images`` and ``texts`` differ in length.
        """
        _check_lengths(images=images, texts=texts)
        cos = (self.image_embeddings(images) * self.text_embeddings(texts)).sum(-1)
        return [float(100 * max(c, 0.0)) for c in cos.tolist()]

    def directional_similarity(
        self,
        sources: Sequence[ImageLike],
        edits: Sequence[ImageLike],
        source_texts: Sequence[str],
        target_texts: Sequence[str],
    ) -> list[float]:
        """CLIP directional similarity per edit: how well the change in the image follows the
        change in the text, in ``[-1, 1]``.

        Raises:
            ValueError: the four lists differ in length.
        """
        _check_lengths(
            sources=sources, edits=edits, source_texts=source_texts, target_texts=target_texts
        )
        image_dir = self.image_embeddings(edits) - self.image_embeddings(sources)
        text_dir = self.text_embeddings(target_texts) - self.text_embeddings(source_texts)
        cos = nn.functional.cosine_similarity(image_dir, text_dir, dim=-1, eps=1e-8)
        return [float(c) for c in cos.tolist()]


class DinoStructure:
    """Structure distance of two images from a local ViT/DINO or DINOv2 folder.

    :meth:`distance` is the Splice / Plug-and-Play metric: the self-similarity (cosine) of the
    last layer's keys over all tokens, compared by mean squared difference. 0 for the same
    image; it ignores appearance (colour) more than layout. :meth:`cls_distance` compares the
    CLS tokens instead (coarser: it also moves with appearance).

    Args:
        folder: a transformers ViT or DINOv2 folder (``config.json``, weights, image processor).
        device: where to run the model.

    Raises:
        FileNotFoundError: the folder is missing or is not a saved model.
        ValueError: the model is not a ViT-style encoder with key projections.

    Example:
        >>> dino = DinoStructure("weights/dino-vitb8")
        >>> dino.distance(result.source, result.targets[0])
        0.021
    """

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu") -> None:
        from transformers import AutoImageProcessor, AutoModel

        path = _folder(folder, "ViT/DINO")
        self.device = torch.device(device)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(self.device)
        self.model.eval()
        self.processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
        self.key_layer = _last_key_projection(self.model)

    def _pixels(self, images: Sequence[ImageLike]) -> Tensor:
        pixels = self.processor(images=_pil(images), return_tensors="pt")["pixel_values"]
        return pixels.to(self.device)

    @torch.no_grad()
    def key_self_similarity(self, image: ImageLike) -> Tensor:
        """Cosine self-similarity of the last layer's keys (all heads), ``[tokens, tokens]``."""
        keys: list[Tensor] = []
        handle = self.key_layer.register_forward_hook(lambda m, i, o: keys.append(o))
        try:
            self.model(pixel_values=self._pixels([image]))
        finally:
            handle.remove()
        k = nn.functional.normalize(keys[-1][0], dim=-1)
        return k @ k.T

    def distance(self, a: ImageLike, b: ImageLike) -> float:
        """Structure distance: mean squared difference of the key self-similarities."""
        return float(((self.key_self_similarity(a) - self.key_self_similarity(b)) ** 2).mean())

    @torch.no_grad()
    def cls_distance(self, a: ImageLike, b: ImageLike) -> float:
        """``1 − cos`` of the two images' CLS tokens (last hidden state)."""
        cls = self.model(pixel_values=self._pixels([a, b])).last_hidden_state[:, 0]
        return float(1 - nn.functional.cosine_similarity(cls[0], cls[1], dim=0))


def _last_key_projection(model: nn.Module) -> nn.Module:
    keys = [
        module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in ("key", "k_proj")
    ]
    if not keys:
        raise ValueError(
            f"{type(model).__name__} has no attention key projections (key / k_proj): "
            "DinoStructure needs a ViT, DINO or DINOv2 encoder"
        )
    return keys[-1]
