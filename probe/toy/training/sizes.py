"""What a bigger latent costs to train here: the toy at 16×16 latents against 32×32.

    python -m probe.toy.training.sizes --steps 20          # or: attnprobe toy sizes --steps 20

Three ways to build the toy are measured with the toy's own models and random inputs:

- ``64 px, VAE ×4``: today's toy, 16×16 latents;
- ``128 px, VAE ×4``: 32×32 latents, the same VAE on images twice the side;
- ``256 px, VAE ×8``: 32×32 latents, a VAE with one block more on images four times the side.

For each: the seconds per UNet training step (forward, backward, AdamW; batch ``--batch``, text
states ``[batch, 77, 64]``) over ``--steps`` steps after two warm-up steps, the seconds per VAE
step (``--vae-steps``, batch 16) including rendering the batch, the pool's memory, and the
query positions of each of the 16 attention layers. The two 32×32 options share the UNet, so
its cost is measured once per latent size. Timings depend on what else runs on the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from probe.families.unet import unet_layers
from probe.models.tiny import sd_ddim_scheduler, tiny_unet
from probe.toy.training.train_stages import render_batch, toy_vae, vae_step

OPTIONS = ((64, 4), (128, 4), (256, 8))
"""(image size, VAE factor) of the measured builds."""


@dataclass
class SizeCost:
    """The measured cost of one build of the toy."""

    image_size: int
    vae_factor: int
    latent: int
    unet_s_per_step: float
    vae_s_per_step: float
    pool_mb: float
    positions: list[int]

    def row(self) -> str:
        """A markdown table row."""
        return (
            f"| {self.image_size} px, VAE ×{self.vae_factor} | {self.latent}×{self.latent} | "
            f"{self.unet_s_per_step:.2f} | {self.vae_s_per_step:.2f} | {self.pool_mb:.0f} | "
            f"{','.join(map(str, self.positions))} |"
        )


def unet_step_seconds(latent: int, steps: int, batch: int, text_dim: int = 64) -> float:
    """Mean seconds of one UNet training step at ``latent``×``latent`` (after two warm-ups)."""
    torch.manual_seed(0)
    unet = tiny_unet(cross_attention_dim=text_dim, sample_size=latent)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    scheduler = sd_ddim_scheduler()
    z = torch.randn(batch, 4, latent, latent)
    hidden = torch.randn(batch, 77, text_dim)
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        noise = torch.randn_like(z)
        t = torch.randint(0, 1000, (batch,))
        pred = unet(scheduler.add_noise(z, noise, t), t, hidden).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return float(np.mean(times))


def vae_step_seconds(image_size: int, factor: int, steps: int, batch: int = 16) -> float:
    """Mean seconds of one VAE training step, rendering its batch included (after a warm-up)."""
    torch.manual_seed(0)
    vae = toy_vae(factor, image_size)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        vae_step(vae, opt, *render_batch(rng, batch, image_size, "v2"))
        if i >= 1:
            times.append(time.perf_counter() - start)
    return float(np.mean(times))


def positions_per_layer(latent: int) -> list[int]:
    """Query positions (h × w) of each attention layer of the toy UNet at this latent size."""
    with torch.device("meta"):
        unet = tiny_unet(cross_attention_dim=64, sample_size=latent)
    return [h * w for h, w in (layer.resolution for layer in unet_layers(unet, latent, latent))]


def measure(
    steps: int = 20, batch: int = 48, vae_steps: int = 5, pool: int = 30000
) -> list[SizeCost]:
    """Measure every build of :data:`OPTIONS` (the UNet once per latent size)."""
    unet_cost: dict[int, float] = {}
    costs = []
    for size, factor in OPTIONS:
        latent = size // factor
        if latent not in unet_cost:
            unet_cost[latent] = unet_step_seconds(latent, steps, batch)
        vae_s = vae_step_seconds(size, factor, vae_steps)
        pool_mb = pool * 4 * latent * latent * 4 / 2**20
        costs.append(
            SizeCost(size, factor, latent, unet_cost[latent], vae_s, pool_mb,
                     positions_per_layer(latent))
        )  # fmt: skip
    return costs


def table(costs: list[SizeCost], batch: int) -> str:
    """The measurements as a markdown table."""
    head = (
        f"| build | latent | UNet s/step (batch {batch}) | VAE s/step (batch 16, with "
        "rendering) | pool MB | positions per layer 0-15 |\n|---|---|---:|---:|---:|---|"
    )
    return "\n".join([head, *(c.row() for c in costs)])


def main(argv: list[str] | None = None) -> int:
    """Command line: measure, print the table, optionally write JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20, help="UNet steps timed per latent size")
    p.add_argument("--vae-steps", type=int, default=5, help="VAE steps timed per build")
    p.add_argument("--batch", type=int, default=48, help="UNet batch (the toy trains with 48)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    costs = measure(args.steps, args.batch, args.vae_steps)
    print(table(costs, args.batch))
    if args.json:
        args.json.write_text(json.dumps([asdict(c) for c in costs], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
