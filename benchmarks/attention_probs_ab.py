"""``attention_probs``: the scale on q against the scale on the scores, interleaved, medians.

The recorder materialises ``softmax(q kᵀ · scale)``; putting the scale on q (queries × head dim)
instead of on the scores (queries × keys) saves one pass over the largest tensor of the layer.
Shapes: SD 1.5's first layer at 64×64 latents (4096 positions, 8 heads of 40, guidance batch 2),
its 32×32 layers, and the toy's 16×16 layers.

    python benchmarks/attention_probs_ab.py      # prints one line per shape
"""

from __future__ import annotations

import statistics
import time

import torch

from probe.attention.controller import attention_probs

SHAPES = ((2, 8, 4096, 40), (2, 8, 1024, 80), (2, 4, 256, 16))


def scale_on_scores(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """The previous implementation: the scale multiplies the [queries, keys] scores."""
    return (torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale).softmax(dim=-1)


def main() -> None:
    torch.manual_seed(0)
    for shape in SHAPES:
        q, k = torch.randn(shape), torch.randn(shape)
        scale = shape[-1] ** -0.5
        diff = (scale_on_scores(q, k, scale) - attention_probs(q, k, scale)).abs().max().item()
        times: dict[str, list[float]] = {"scores": [], "q": []}
        for _ in range(7 if shape[2] >= 4096 else 40):
            for name, f in (("scores", scale_on_scores), ("q", attention_probs)):
                t0 = time.perf_counter()
                f(q, k, scale)
                times[name].append(time.perf_counter() - t0)
        old, new = (statistics.median(times[n]) for n in ("scores", "q"))
        print(f"{shape}: scale on scores {old * 1e3:.1f} ms, on q {new * 1e3:.1f} ms, "
              f"ratio {new / old:.3f}, max difference {diff:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
