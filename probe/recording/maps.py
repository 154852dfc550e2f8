"""AttentionMaps: recorded attention, indexed by (layer, step, kind), with word look-up,
aggregation at a common resolution, and safetensors save/load.

Stored tensors (names as on disk):

- ``cross/L05/S012``: ``[samples, heads', queries, tokens]`` (per-token maps, native resolution)
- ``self/L05/S012``: ``[samples, heads', queries, queries]`` (``full``) or
  ``[samples, heads', cells, cells]`` (``pool:R``)
- ``self/L05/S012/u|s|v``: ``[samples, heads', queries, K]``, ``[samples, heads', K]``,
  ``[samples, heads', queries, K]`` (``svd:K``; the map is ``u diag(s) vᵀ``)
- on a DiT also ``text_image/...``, ``text_text/...`` (whole) and, on SD3.5 Medium's
  dual-attention blocks, ``image_only/L05/S012`` (kept as ``self``: whole, pooled or SVD)

``heads'`` is 1 for the head mean. Queries run row-major over the layer's (height, width) map.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from safetensors.torch import load, load_file, save, save_file
from torch import Tensor

from probe.attention.layer_files import layers_from_json, layers_to_json
from probe.attention.layer_info import LayerInfo, table_at
from probe.prompts.words import find_word

if TYPE_CHECKING:
    from probe.viz.explorer import ExplorerPage


def tensor_name(kind: str, layer: int, step: int, part: str = "") -> str:
    """``cross/L05/S012`` (``part`` appends ``/u`` etc.)."""
    return f"{kind}/L{layer:02d}/S{step:03d}" + (f"/{part}" if part else "")


def tensor_layer(name: str) -> int | None:
    """The layer of a tensor name (``cross/L05/S012/u`` → 5), ``None`` for other names."""
    parts = name.split("/")
    if len(parts) < 3 or not parts[1].startswith("L") or not parts[1][1:].isdigit():
        return None
    return int(parts[1][1:])


@dataclass
class AttentionMaps:
    """Attention maps of one recording.

    Attributes:
        layers: the layer table of the run, at ``latent_hw``.
        latent_hw: latent (height, width) the maps were recorded at.
        tokens: per recorded sample, the text encoder's tokens ``[BOS, ..., EOS]``.
        timesteps: step index → scheduler timestep.
        settings: how the maps were reduced (heads, self_reduce, dtype, rows, ...).
        data: tensor name → tensor (see the module docstring).
    """

    layers: list[LayerInfo]
    latent_hw: tuple[int, int]
    tokens: list[list[str]] = field(default_factory=list)
    timesteps: dict[int, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Tensor] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"AttentionMaps({len(self.data)} tensors, layers={self.recorded_layers()}, "
            f"steps={len(self.steps)}, kinds={self.kinds}, samples={len(self.tokens)}, "
            f"{self.nbytes / 2**20:.1f} MiB)"
        )

    # -- what is here ------------------------------------------------------------------------
    @property
    def steps(self) -> list[int]:
        return sorted({int(n.split("/")[2][1:]) for n in self.data})

    @property
    def kinds(self) -> list[str]:
        return sorted({n.split("/")[0] for n in self.data})

    def recorded_layers(self, kind: str | None = None) -> list[int]:
        return sorted(
            {int(n.split("/")[1][1:]) for n in self.data if kind is None or n.startswith(kind)}
        )

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.data.values())

    def resolution(self, layer: int) -> tuple[int, int]:
        """(height, width) of ``layer``'s query map in this recording."""
        return self.layers[layer].resolution_at(*self.latent_hw)

    # -- access ------------------------------------------------------------------------------
    def __getitem__(self, key: tuple[int, int, str]) -> Tensor:
        """``maps[layer, step, kind]``: the stored map (an SVD is multiplied back out)."""
        layer, step, kind = key
        name = tensor_name(kind, layer, step)
        if name in self.data:
            return self.data[name]
        if name + "/u" in self.data:
            u, s, v = (self.data[f"{name}/{p}"].float() for p in "usv")
            return (u * s.unsqueeze(-2)) @ v.transpose(-1, -2)
        raise KeyError(self._missing(layer, step, kind))

    def _missing(self, layer: int, step: int, kind: str) -> str:
        if kind not in ("cross", "self", "text_image", "text_text", "image_only"):
            return (
                f"kind {kind!r} is neither 'cross' nor 'self' (nor a DiT's 'text_image' or "
                "'text_text', nor SD3.5 Medium's 'image_only')"
            )
        layers, steps = self.recorded_layers(kind), self.steps
        if layer not in layers:
            return f"layer {layer} was not recorded ({kind}): recorded layers are {layers}"
        return f"step {step} was not recorded: recorded steps are {steps[0]}-{steps[-1]}"

    def svd(self, layer: int, step: int, kind: str = "self") -> tuple[Tensor, Tensor, Tensor]:
        """The stored SVD ``(u, s, v)`` of a self-attention map recorded with ``svd:K`` (or of
        SD3.5 Medium's ``image_only`` map, reduced the same way)."""
        name = tensor_name(kind, layer, step)
        if name + "/u" not in self.data:
            raise KeyError(f"{name} was not recorded as an SVD (self_reduce='svd:K')")
        u, s, v = (self.data[f"{name}/{p}"].float() for p in "usv")
        return u, s, v

    def cross(self, layer: int, step: int, sample: int = 0) -> Tensor:
        """Cross-attention of one sample: ``[heads', height, width, tokens]``."""
        m = self[layer, step, "cross"][sample].float()
        h, w = self.resolution(layer)
        return m.reshape(m.shape[0], h, w, m.shape[-1])

    def word_positions(
        self, word: str, sample: int = 0, occurrence: int | str | None = None
    ) -> list[int]:
        """Token positions of ``word`` in recorded sample ``sample``'s prompt."""
        if not self.tokens:
            raise KeyError("this recording has no tokens: pass prompts= to record_attention")
        return find_word(self.tokens[sample], word, occurrence, self.settings.get("context_length"))

    def word_map(
        self,
        word: str | int,
        sample: int = 0,
        layers: Iterable[int] | None = None,
        steps: Iterable[int] | None = None,
        size: tuple[int, int] | None = None,
        occurrence: int | str | None = None,
    ) -> Tensor:
        """A word's cross-attention map, averaged over heads, its tokens, layers and steps.

        Args:
            word: a word of the prompt, or a token position.
            sample: which recorded sample.
            layers: layers to average (default: every recorded cross layer).
            steps: steps to average (default: every recorded step).
            size: common (height, width) to resize to (default: the largest layer's).
            occurrence: see :func:`probe.prompts.words.find_word`.

        Returns:
            ``[height, width]`` float32 map.

        Example:
            >>> with record_attention(pipe) as maps:
            ...     pipe("a red car")
            >>> maps.word_map("car").shape
            torch.Size([8, 8])
        """
        positions = (
            [word] if isinstance(word, int) else self.word_positions(word, sample, occurrence)
        )
        chosen_layers = list(layers) if layers is not None else self.recorded_layers("cross")
        chosen_steps = list(steps) if steps is not None else self.steps
        if size is None:
            size = max((self.resolution(i) for i in chosen_layers), key=lambda hw: hw[0] * hw[1])
        total = torch.zeros(size)
        for layer in chosen_layers:
            for step in chosen_steps:
                m = self.cross(layer, step, sample)[..., positions].mean(dim=(0, -1))
                total += F.interpolate(
                    m[None, None], size=size, mode="bilinear", align_corners=False
                )[0, 0]
        return total / (len(chosen_layers) * len(chosen_steps))

    def explore(
        self, image: Any = None, sample: int = 0, max_bytes: int = 5_000_000
    ) -> ExplorerPage:
        """The interactive explorer of this recording; in Jupyter it shows itself inline.

        Tokens to hover or click, sliders for layer and step, a click on the image for that
        pixel's self-attention: :func:`probe.viz.explorer.explorer_page` (``attnprobe view``
        writes the same page to a file).

        Args:
            image: the generated image (PIL or ``[H, W, 3]``), or ``None`` for grey.
            sample: which recorded sample.
            max_bytes: the page's size budget (what does not fit is named on the page).

        Example:
            >>> with record_attention(pipe) as maps:
            ...     image = pipe("a red car").images[0]
            >>> maps.explore(image)          # the last line of a notebook cell
        """
        from probe.viz.explorer import explorer_page

        return explorer_page(self, image, sample=sample, max_bytes=max_bytes)

    # -- disk --------------------------------------------------------------------------------
    def _metadata(self) -> dict[str, str]:
        meta = {
            "layers": layers_to_json(self.layers),
            "latent_hw": list(self.latent_hw),
            "tokens": self.tokens,
            "timesteps": {str(k): v for k, v in self.timesteps.items()},
            "settings": self.settings,
        }
        return {"attnprobe": json.dumps(meta)}

    def save(self, path: str | Path) -> Path:
        """Write one safetensors file (tensors plus JSON metadata), atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tensors = {k: v.contiguous() for k, v in self.data.items()}
        save_file(tensors, str(tmp), metadata=self._metadata())
        tmp.replace(path)
        return path

    def to_bytes(self) -> bytes:
        """The safetensors file :meth:`save` writes, as bytes (for checksums and atomic writes)."""
        tensors = {k: v.contiguous() for k, v in self.data.items()}
        return save(tensors, metadata=self._metadata())

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> AttentionMaps:
        """Read the bytes of a file written by :meth:`save` (``source`` names it in errors)."""
        if len(data) < 8:
            raise ValueError(f"{source} is not a safetensors file ({len(data)} bytes)")
        size = int.from_bytes(data[:8], "little")
        try:
            header = json.loads(data[8 : 8 + size])
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{source} has an unreadable safetensors header: {err}") from err
        raw = (header.get("__metadata__") or {}).get("attnprobe")
        if raw is None:
            raise ValueError(f"{source} is not an attnprobe recording (no 'attnprobe' metadata)")
        return cls._from_meta(json.loads(raw), load(data))

    @classmethod
    def load(cls, path: str | Path, layers: Iterable[int] | None = None) -> AttentionMaps:
        """Read a file written by :meth:`save`; with ``layers``, only those layers' tensors
        (the others are not read from disk: how probes stream a dataset layer by layer)."""
        from safetensors import safe_open

        path = Path(path)
        if layers is None:
            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get("attnprobe")
            data = load_file(str(path)) if raw is not None else {}
        else:
            wanted = set(layers)
            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get("attnprobe")
                names = [k for k in f.keys() if tensor_layer(k) in wanted]  # noqa: SIM118
                data = {k: f.get_tensor(k) for k in names}
        if raw is None:
            raise ValueError(f"{path} is not an attnprobe recording (no 'attnprobe' metadata)")
        return cls._from_meta(json.loads(raw), data)

    @classmethod
    def _from_meta(cls, meta: dict[str, Any], data: dict[str, Tensor]) -> AttentionMaps:
        latent_hw = (int(meta["latent_hw"][0]), int(meta["latent_hw"][1]))
        # files written before the table followed the run hold it at the UNet's sample_size
        layers = table_at(layers_from_json(meta["layers"]), latent_hw)
        return cls(
            layers=layers,
            latent_hw=latent_hw,
            tokens=meta["tokens"],
            timesteps={int(k): v for k, v in meta["timesteps"].items()},
            settings=meta["settings"],
            data=data,
        )
