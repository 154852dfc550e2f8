"""How much each benchmark runs: the full measurement, and a quick smoke mode for CI."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Profile:
    """Sizes, steps and repeats of every case.

    Attributes:
        name: ``full`` or ``quick``.
        repeats: timed runs per variant of the cheap (toy) cases.
        warmup: run each variant once, untimed, before the timed runs (cheap cases only).
        pipe_steps: DDIM steps of the toy pipeline (``None``: the model's own default).
        sd15: build the real SD 1.5 UNet (else the toy-sized UNet stands in for it).
        sd15_latents: latent sizes of the SD 1.5 recording case.
        sd15_steps: DDIM steps of the SD 1.5 cases.
        sd15_repeats: timed runs per variant of the SD 1.5 cases.
        fpe_latent: latent size of the FPE fused-vs-materialised case.
        k_values: numbers of targets of the shared-source case.
        k_repeats: timed runs per variant of the shared-source case.
        null_inner_steps: Adam steps per DDIM step of null-text inversion (the paper: 10).
        real_repeats: timed runs per variant of the real-image case.
        scaling_latents: latent sizes of the scaling case.
        scaling_layers: layer specs of the scaling case.
        scaling_steps: DDIM steps of the scaling case.
        scaling_repeats: timed runs per variant of the scaling case.
        probe_repeats: timed runs per variant of the probing case (its grid is the demo's
            colour grid, full or quick).
        sdxl: build the real SDXL base UNet (else ``tiny-xl``'s UNet stands in for it).
        sdxl_latent: latent size of the SDXL cases (128: 1024 px; ``run_all.py --sdxl-latent``
            changes it for a smoke run of the full-size UNet).
        sdxl_steps: DDIM steps of the SDXL cases.
        sdxl_repeats: timed runs per variant of the SDXL cases.
        overhead_repeats: timed runs per variant of the FPE-overhead case (its limit, 1.05×, is
            closer to the host's run-to-run spread than the others', so it takes more runs).
    """

    name: str
    repeats: int
    warmup: bool
    pipe_steps: int | None
    sd15: bool
    sd15_latents: tuple[int, ...]
    sd15_steps: int
    sd15_repeats: int
    fpe_latent: int
    k_values: tuple[int, ...]
    k_repeats: int
    null_inner_steps: int
    real_repeats: int
    scaling_latents: tuple[int, ...]
    scaling_layers: tuple[str, ...]
    scaling_steps: int
    scaling_repeats: int
    probe_repeats: int = 1
    sdxl: bool = True
    sdxl_latent: int = 128
    sdxl_steps: int = 1
    sdxl_repeats: int = 1
    overhead_repeats: int = 15

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Profile(
    name="full",
    repeats=5,
    warmup=True,
    pipe_steps=None,
    sd15=True,
    sd15_latents=(32, 64),
    sd15_steps=1,
    sd15_repeats=2,
    fpe_latent=64,
    k_values=(1, 2, 4, 8),
    k_repeats=3,
    null_inner_steps=10,
    real_repeats=2,
    scaling_latents=(16, 32, 64),
    scaling_layers=("mid", "res<max", "all"),
    scaling_steps=4,
    scaling_repeats=3,
    probe_repeats=3,
)

QUICK = Profile(
    name="quick",
    repeats=1,
    warmup=False,
    pipe_steps=2,
    sd15=False,
    sd15_latents=(8,),
    sd15_steps=1,
    sd15_repeats=1,
    fpe_latent=8,
    k_values=(1, 2),
    k_repeats=1,
    null_inner_steps=1,
    real_repeats=1,
    scaling_latents=(8,),
    scaling_layers=("mid", "all"),
    scaling_steps=1,
    scaling_repeats=1,
    probe_repeats=1,
    sdxl=False,
    sdxl_latent=8,
    overhead_repeats=1,
)

PROFILES = {"full": FULL, "quick": QUICK}


@dataclass
class Bench:
    """What every case gets: the profile, the model to load, a logger, cached models.

    Attributes:
        profile: sizes and repeats.
        model: ``"toy"``, ``"tiny"`` or a folder (the toy-world cases run on it); ``None``:
            ``toy`` if its weights are on disk when the first toy case starts, else ``tiny``.
        log: where progress lines go.
    """

    profile: Profile
    model: str | None
    log: Callable[[str], None] = print
    _pipe: Any = None
    _sd15: Any = None
    _sdxl: Any = None

    def pipe(self) -> Any:
        """The toy (or tiny) pipeline, loaded once."""
        if self._pipe is None:
            from probe.models import TOY_DIR, load_pipeline

            if self.model is None:
                self.model = "toy" if (TOY_DIR / "model_index.json").is_file() else "tiny"

            self._pipe = load_pipeline(self.model)
        return self._pipe

    def sd15_rig(self) -> Any:
        """The SD 1.5 UNet rig (random weights), built once; the toy-sized UNet in quick mode."""
        if self._sd15 is None:
            from benchmarks.rigs import UNetRig, sd15_unet, toy_like_unet

            if self.profile.sd15:
                self._sd15 = UNetRig(sd15_unet(), name="SD 1.5 UNet (random weights)")
            else:
                self._sd15 = UNetRig(toy_like_unet(768), name="toy-sized UNet (quick mode)")
        return self._sd15

    def drop_sd15(self) -> None:
        """Free the SD 1.5 UNet (3.3 GiB) before the toy cases."""
        self._sd15 = None

    def sdxl_rig(self) -> Any:
        """The SDXL base UNet rig (random weights), built once; ``tiny-xl``'s UNet in quick
        mode."""
        if self._sdxl is None:
            from benchmarks.rigs import UNetRig, sdxl_unet, tiny_xl_like_unet

            if self.profile.sdxl:
                self._sdxl = UNetRig(sdxl_unet(), name="SDXL base UNet (random weights)")
            else:
                self._sdxl = UNetRig(tiny_xl_like_unet(), name="tiny-xl UNet (quick mode)")
        return self._sdxl

    def drop_sdxl(self) -> None:
        """Free the SDXL UNet (9.6 GiB) before the other cases."""
        self._sdxl = None
