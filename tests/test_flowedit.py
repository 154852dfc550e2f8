"""FlowEdit on tiny-sd3, tiny-flux (guidance as an input, as FLUX.1-dev) and a Flux without a
guidance embedding (true CFG), against a reference written from the authors' ``FlowEditSD3`` /
``FlowEditFLUX`` (fallenshock/FlowEdit, ``FlowEdit_utils.py``), which calls the transformer
directly with its own scheduler, encodings and noise (drawn by attnprobe's documented rule).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from editing.methods.flowedit import FLOWEDIT_DEFAULTS, flowedit
from probe.models import load_pipeline
from tests.test_flow_inversion import ref_latent, ref_schedule, ref_velocity, scene


@torch.no_grad()
def ref_flowedit(pipe, src, tar, n, n_max, n_min, n_avg, g_src, g_tar, seed) -> torch.Tensor:
    """The authors' loop: skip while ``n − i > n_max``; ΔV averaged over ``n_avg`` draws while
    ``n − i > n_min``; then plain Euler on the target from ``z + x_t_src − x_src``."""
    sigmas, timesteps = ref_schedule(pipe, n)
    x_src = ref_latent(pipe, scene())
    generator = torch.Generator().manual_seed(seed)
    z = x_src.clone()
    for i, t in enumerate(timesteps):
        if n - i > n_max:
            continue
        s, s_next = sigmas[i], sigmas[i + 1]
        if n - i > n_min:
            dv = torch.zeros_like(x_src)
            for _ in range(n_avg):
                zt_src = (1 - s) * x_src + s * torch.randn(x_src.shape, generator=generator)
                zt_tar = z + zt_src - x_src
                v_src = ref_velocity(pipe, zt_src, t, src, g_src)
                dv += (ref_velocity(pipe, zt_tar, t, tar, g_tar) - v_src) / n_avg
            z = z + (s_next - s) * dv
            continue
        if i == n - n_min:
            xt_src = s * torch.randn(x_src.shape, generator=generator) + (1 - s) * x_src
            xt_tar = z + xt_src - x_src
        xt_tar = xt_tar + (s_next - s) * ref_velocity(pipe, xt_tar, t, tar, g_tar)
    return z if n_min == 0 else xt_tar


CASES = [  # model, num_steps, n_max, n_min, n_avg, source and target guidance
    ("sd3", 6, 5, 0, 1, 3.5, 13.5),
    ("sd3", 6, 5, 2, 2, 2.0, 4.0),
    ("flux", 6, 5, 0, 2, 1.5, 5.5),
    ("flux", 6, 4, 1, 1, 1.5, 5.5),
    ("cfg_flux", 6, 5, 1, 1, 1.0, 3.0),
]


@pytest.mark.parametrize(("model", "n", "n_max", "n_min", "n_avg", "g_src", "g_tar"), CASES)
def test_flowedit_is_the_authors_loop(model, n, n_max, n_min, n_avg, g_src, g_tar, request):
    pipe = request.getfixturevalue(model)
    ours = flowedit(pipe, scene(), "a red car", "a blue car", num_steps=n, n_max=n_max,
                    n_min=n_min, n_avg=n_avg, source_guidance=g_src, target_guidance=g_tar,
                    seed=3)  # fmt: skip
    ref = ref_flowedit(pipe, "a red car", "a blue car", n, n_max, n_min, n_avg, g_src, g_tar, 3)
    diff = (ours.latents - ref).abs().max().item()
    assert diff <= 1e-4, diff
    assert (ours.latents - ours.source_latents).abs().max() > 1e-2  # it did edit
    assert ours.settings["n_max"] == n_max and ours.image.size == (128, 128)


def test_defaults_are_the_authors(flux):
    """SD3_exp.yaml and FLUX_exp.yaml; unset arguments take the family's."""
    sd3, dev = FLOWEDIT_DEFAULTS["sd3"], FLOWEDIT_DEFAULTS["flux"]
    assert (sd3.num_steps, sd3.n_max, sd3.n_min, sd3.n_avg) == (50, 33, 0, 1)
    assert (sd3.source_guidance, sd3.target_guidance, sd3.seed) == (3.5, 13.5, 42)
    assert (dev.num_steps, dev.n_max, dev.source_guidance, dev.target_guidance) == (
        28,
        24,
        1.5,
        5.5,
    )
    got = flowedit(flux, scene(), "a red car", "a blue car", num_steps=4, n_max=2).settings
    assert (got["source_guidance"], got["target_guidance"], got["seed"], got["n_min"]) == (
        1.5, 5.5, 10, 0,
    )  # fmt: skip


@pytest.mark.parametrize("model", ["sd3", "flux", "cfg_flux"])
def test_target_equal_to_source_returns_the_source(model, request):
    """With the same prompt and guidance ΔV is zero up to float rounding (the target row's input
    ``z + z_src − x_src`` is ``z_src`` only to within one rounding), so ``z`` stays ``x_src``.
    With different guidances it does not: FlowEdit then moves the image along the guidance
    difference; and the plain sampling of the last ``n_min`` steps does not return either."""
    pipe = request.getfixturevalue(model)
    same = flowedit(pipe, scene(), "a red car", "a red car", num_steps=8, n_max=6,
                    source_guidance=3.0, target_guidance=3.0)  # fmt: skip
    assert (same.latents - same.source_latents).abs().max() <= 1e-5
    apart = flowedit(pipe, scene(), "a red car", "a red car", num_steps=8, n_max=6,
                     source_guidance=1.0, target_guidance=3.0)  # fmt: skip
    assert (apart.latents - apart.source_latents).abs().max() > 1e-2


def test_bad_inputs_are_refused(sd3, tiny_pipe):
    with pytest.raises(NotImplementedError, match=r"flowedit \(FlowEdit\) needs a flow model"):
        flowedit(tiny_pipe, np.zeros((64, 64, 3), dtype=np.uint8), "a red car", "a blue car")
    with pytest.raises(ValueError, match=r"image is 64x64 px .* 128x128: resize it"):
        flowedit(sd3, scene(64), "a red car", "a blue car", num_steps=4, n_max=2)
    with pytest.raises(ValueError, match=r"divisible by 16 .* crop it first"):
        flowedit(sd3, np.zeros((120, 120, 3), np.uint8), "a", "b", height=120, width=120)
    with pytest.raises(ValueError, match="0 <= n_min <= n_max <= num_steps"):
        flowedit(sd3, scene(), "a red car", "a blue car", num_steps=4, n_max=6)
    with pytest.raises(ValueError, match="n_avg=0"):
        flowedit(sd3, scene(), "a red car", "a blue car", num_steps=4, n_max=2, n_avg=0)


# -- the command line ---------------------------------------------------------------------------
def test_cli_runs_flowedit_on_a_real_image(tmp_path):
    """``attnprobe edit --method flowedit --image`` edits each target from the image with the
    authors' defaults except what is given; the result is flowedit()'s."""
    import json

    from PIL import Image

    from probe.cli.main import main

    Image.fromarray(scene()).save(tmp_path / "car.png")
    out = tmp_path / "out"
    assert main(["edit", "--model", "tiny-sd3", "--method", "flowedit", "--source", "a red car",
                 "--target", "a blue car", "--image", str(tmp_path / "car.png"),
                 "--num-steps", "4", "--n-max", "3", "--target-guidance", "4",
                 "--out", str(out)]) == 0  # fmt: skip
    settings = json.loads((out / "settings.json").read_text())
    edit = settings["edits"][0]
    assert settings["method"] == "flowedit" and settings["inversion"] is None
    assert (edit["n_max"], edit["target_guidance"], edit["source_guidance"]) == (3, 4.0, 3.5)
    assert edit["seed"] == FLOWEDIT_DEFAULTS["sd3"].seed
    direct = flowedit(load_pipeline("tiny-sd3"), scene(), "a red car", "a blue car",
                      num_steps=4, n_max=3, target_guidance=4)  # fmt: skip
    saved = np.asarray(Image.open(out / "target_0.png"), dtype=np.int16)
    assert np.abs(saved - np.asarray(direct.image, dtype=np.int16)).max() == 0
    assert np.array_equal(np.asarray(Image.open(out / "source.png")), scene())


@pytest.mark.parametrize(
    ("flags", "message"),
    [([], "edits a real image: add --image"),
     (["--image", "IMG", "--inversion", "euler"], "--inversion: --method flowedit inverts"),
     (["--image", "IMG", "--guidance", "3"], "give --source-guidance and --target-guidance"),
     (["--image", "IMG", "--layers", "all"], "--layers does not apply to --method flowedit"),
     (["--image", "IMG", "--n-avg", "0"], "n_avg=0")],
)  # fmt: skip
def test_cli_refuses_what_flowedit_does_not_take(flags, message, tmp_path, capsys):
    from PIL import Image

    from probe.cli.main import main

    Image.fromarray(scene()).save(tmp_path / "car.png")
    flags = [str(tmp_path / "car.png") if f == "IMG" else f for f in flags]
    assert main(["edit", "--model", "tiny-sd3", "--method", "flowedit", "--source", "a red car",
                 "--target", "a blue car", *flags, "--out", str(tmp_path / "o")]) == 2  # fmt: skip
    assert message in capsys.readouterr().err


def test_edit_points_flowedit_to_its_own_function(sd3):
    from editing import edit

    with pytest.raises(ValueError, match=r"editing.methods.flowedit.flowedit\(pipe, image"):
        edit(sd3, "a red car", ["a blue car"], method="flowedit")
