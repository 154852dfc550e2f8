"""The full SD 1.5 UNet, built from its config with random weights, through hooks and recorder."""

from __future__ import annotations

import pytest
import torch

from probe.attention.batch import BatchLayout
from probe.attention.hooks import AttentionHooks
from probe.recording.recorder import record_attention
from tests.conftest import unet_config


@pytest.mark.slow
def test_full_sd15_unet_records_every_layer_at_small_latent():
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**unet_config("sd15")).eval()
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    emb = torch.randn(2, 77, 768, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = unet(latents, 981, encoder_hidden_states=emb).sample
        hooks = AttentionHooks(unet, layout=BatchLayout.for_samples(1, guidance=True))
        with (
            record_attention(unet, hooks=hooks, self_reduce="full", dtype=torch.float32) as maps,
            hooks,
        ):
            recorded = unet(latents, 981, encoder_hidden_states=emb).sample
    assert torch.allclose(recorded, plain, atol=1e-5)
    assert maps.recorded_layers() == list(range(16))
    sides = [maps.resolution(i)[0] for i in range(16)]
    assert sides == [16, 16, 8, 8, 4, 4, 2, 4, 4, 4, 8, 8, 8, 16, 16, 16]
    assert maps[0, 0, "self"].shape == (1, 1, 256, 256)
    assert torch.allclose(maps[6, 0, "cross"].sum(-1), torch.ones(()), atol=1e-5)
