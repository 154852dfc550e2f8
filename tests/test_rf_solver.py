"""RF-Solver and FireFlow (editing/rf_solver.py) and their value injection
(editing/methods/value_injection.py) on tiny-sd3 and tiny-flux.

The references are written here from the authors' equations (RF-Solver-Edit's and FireFlow's
``src/flux/sampling.py``: ``t`` is the sigma, a step from ``t_curr`` to ``t_prev`` calls the
model at ``t_curr`` and at the midpoint, RF-Solver adds ``h·v + ½h²·(v_mid − v)/(h/2)``,
FireFlow ``h·v_mid`` and reuses ``v_mid`` as the next step's ``v``; inversion walks the same
schedule reversed) with their own schedule, encodings and transformer calls
(tests/test_flow_inversion.py), and for the value injection their own attention processors
(tests/dit_reference.py) that keep V of the chosen blocks under the authors' key
``(step of the interval, first or midpoint call, block)`` while inverting and swap it in,
conditional call only, while sampling the target alone, as the authors' one-row edit does.
"""

from __future__ import annotations

import contextlib
import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline

from editing import edit
from editing.flow_inversion import flow_invert
from editing.methods.registry import get_method
from editing.methods.value_injection import rf_solver_blocks
from editing.rf_solver import SolverInversion, solver_invert
from editing.sampling import denoise, encode_prompts
from probe.attention.batch import BatchLayout
from tests.dit_reference import RefAttention, RefFluxProcessor, RefSD3Processor, installed
from tests.test_flow_inversion import _call, _encode, ref_latent, ref_schedule, scene

TOL = 1e-4
SRC, TGT = "a red car", "a blue car"


# -- the reference ------------------------------------------------------------------------------
class RefValues(RefAttention):
    """Keeps V ``[rows, heads, tokens, dim]`` of ``blocks`` under ``(key, layer)`` while
    ``mode`` is ``"store"``; while ``"inject"`` attends with the stored V where there is one."""

    def __init__(self, blocks: set[int]) -> None:
        super().__init__()
        self.blocks, self.stored, self.key, self.mode = blocks, {}, None, None

    def attend(self, q, k, v, image, text):
        if self.mode is not None and self.layer in self.blocks:
            key = (*self.key, self.layer)
            if self.mode == "store":
                self.stored[key] = v.clone()
            elif key in self.stored:
                v = self.stored[key]
        return super().attend(q, k, v, image, text)


@contextlib.contextmanager
def ref_processors(pipe, ref: RefValues | None, prompt: str):
    if ref is None:
        yield
        return
    transformer = pipe.transformer
    if isinstance(pipe, FluxPipeline):
        n_text = _encode(pipe, prompt)[0].shape[1]
        names = [f"transformer_blocks.{i}" for i in range(transformer.config.num_layers)]
        names += [f"single_transformer_blocks.{j}" for j in range(transformer.config.num_single_layers)]  # fmt: skip
        procs = {f"{n}.attn.processor": RefFluxProcessor(ref, n_text, i) for i, n in enumerate(names)}  # fmt: skip
    else:
        names = [f"transformer_blocks.{i}.attn.processor" for i in range(transformer.config.num_layers)]  # fmt: skip
        procs = {n: RefSD3Processor(ref, i) for i, n in enumerate(names)}
    with installed(transformer, procs):
        yield


def ref_velocity(pipe, x, sigma, prompt, guidance, ref=None, key=None, mode=None):
    """The guided velocity at ``sigma`` (timestep ``1000·σ``); the reference attention keeps or
    swaps V on the conditional call only."""
    t = torch.tensor(float(sigma) * 1000)
    if ref is not None:
        ref.key, ref.mode = key, mode
    cond = _call(pipe, x, t, prompt, guidance)
    if ref is not None:
        ref.mode = None
    rows = not (isinstance(pipe, FluxPipeline) and pipe.transformer.config.guidance_embeds)
    if rows and guidance > 1:
        uncond = _call(pipe, x, t, "", guidance)
        return uncond + guidance * (cond - uncond)
    return cond


@torch.no_grad()
def ref_solve(pipe, x, sigmas, steps, prompt, guidance, solver, ref=None, mode=None, inject=0):
    """The authors' loop over ``steps``, ``(i, σ, σ')`` per step (``i``: the interval's sampling
    step, the authors' key ``t``); the list of latents after each step."""
    path, previous = [], None
    for j, (i, s, s_next) in enumerate(steps):
        on = mode if i < inject else None
        h = s_next - s
        if solver == "fireflow" and j > 0:
            v = previous
        else:
            v = ref_velocity(pipe, x, s, prompt, guidance, ref, (i, "first"), on)
        mid = x + h / 2 * v
        v_mid = ref_velocity(pipe, mid, s + h / 2, prompt, guidance, ref, (i, "mid"), on)
        if solver == "rf-solver":
            x = x + h * v + 0.5 * h**2 * (v_mid - v) / (h / 2)
        else:
            x = x + h * v_mid
        previous = v_mid
        path.append(x)
    return path


def ref_invert(pipe, image, prompt, n, guidance, solver, ref=None, inject=0):
    """``[x_0 … x_N]``, noisiest first: the schedule reversed, from the encoded image."""
    sigmas, _ = ref_schedule(pipe, n)
    steps = [(k, float(sigmas[k + 1]), float(sigmas[k])) for k in range(n - 1, -1, -1)]
    x = ref_latent(pipe, image)
    with ref_processors(pipe, ref, prompt):
        path = ref_solve(pipe, x, sigmas, steps, prompt, guidance, solver, ref, "store", inject)
    return [*path[::-1], x]


def ref_sample(pipe, x, prompt, n, guidance, solver, ref=None, inject=0):
    sigmas, _ = ref_schedule(pipe, n)
    steps = [(i, float(sigmas[i]), float(sigmas[i + 1])) for i in range(n)]
    with ref_processors(pipe, ref, prompt):
        return ref_solve(pipe, x, sigmas, steps, prompt, guidance, solver, ref, "inject", inject)[
            -1
        ]


def worst(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


# -- the solvers --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "solver", "guidance"),
    [("sd3", "rf-solver", 1.0), ("sd3", "fireflow", 3.0), ("flux", "rf-solver", 3.5),
     ("flux", "fireflow", 1.0), ("cfg_flux", "rf-solver", 2.0)],
)  # fmt: skip
def test_solver_invert_and_sampling_are_the_authors_midpoint_solvers(
    model, solver, guidance, request
):
    pipe = request.getfixturevalue(model)
    inv = solver_invert(pipe, scene(), SRC, num_steps=4, guidance_scale=guidance, solver=solver,
                        store_values=None)  # fmt: skip
    ref = ref_invert(pipe, scene(), SRC, 4, guidance, solver)
    assert isinstance(inv, SolverInversion) and inv.kind == solver and inv.values is None
    assert worst(inv.trajectory, ref) <= TOL, worst(inv.trajectory, ref)
    guided = guidance > 1 and not pipe.transformer.config.get("guidance_embeds", False)
    cond = encode_prompts(pipe, [TGT], guided)
    layout = BatchLayout.for_samples(1, guided)
    ours = denoise(pipe, cond, inv.trajectory[0].clone(), layout, [], 4, guidance,
                   step_rule=inv.step_rule())  # fmt: skip
    theirs = ref_sample(pipe, ref[0], TGT, 4, guidance, solver)
    assert (ours - theirs).abs().max().item() <= TOL


def _round_trip(pipe, n: int, kind: str) -> float:
    """max |reconstruction − encoded image| in latents after ``n`` steps."""
    if kind == "euler":
        inv = flow_invert(pipe, scene(), SRC, num_steps=n)
    else:
        inv = solver_invert(pipe, scene(), SRC, num_steps=n, solver=kind, store_values=None)
    cond, layout = encode_prompts(pipe, [SRC], False), BatchLayout.for_samples(1, False)
    out = denoise(pipe, cond, inv.trajectory[0].clone(), layout, [], n, 1.0,
                  step_rule=inv.step_rule())  # fmt: skip
    return (out - inv.trajectory[-1]).abs().max().item()


@pytest.mark.parametrize("model", ["sd3", "flux"])
def test_second_order_round_trip_beats_inverse_euler(model, request):
    """At the same step count both solvers come back closer than inverse Euler, and their error
    falls ~4× as the steps double (second order; measured: Flux RF-Solver 0.23 → 0.072,
    FireFlow 0.26 → 0.076, inverse Euler 0.99 → 0.57; SD3 0.021 → 0.0055, 0.031 → 0.0032,
    0.42 → 0.19). RF-Solver at 4 steps (8 model calls) also beats inverse Euler at 8."""
    pipe = request.getfixturevalue(model)
    errors = {k: [_round_trip(pipe, n, k) for n in (4, 8)] for k in ("euler", "rf-solver", "fireflow")}  # fmt: skip
    for kind in ("rf-solver", "fireflow"):
        assert errors[kind][0] < 0.5 * errors["euler"][0], errors
        assert errors[kind][1] < 0.5 * errors["euler"][1], errors
        assert errors[kind][0] / errors[kind][1] >= 2.5, errors  # first order would give ~2
    assert errors["rf-solver"][0] < errors["euler"][1], errors


# -- value injection ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "solver", "guidance", "blocks"),
    [("flux", "rf-solver", 2.0, "authors"), ("flux", "fireflow", 2.0, "all"),
     ("sd3", "rf-solver", 2.0, "all"), ("cfg_flux", "fireflow", 2.0, "authors")],
)  # fmt: skip
def test_value_injection_is_the_authors(model, solver, guidance, blocks, request):
    """Invert storing V, edit with method rf-solver: the target equals the reference's one-row
    edit that swaps the stored V in (conditional call, first 2 steps); the injection changes
    the edit (the test is not vacuous)."""
    pipe = request.getfixturevalue(model)
    n, inject = 4, 2
    inv = solver_invert(pipe, scene(), SRC, num_steps=n, solver=solver, store_values=blocks,
                        inject_steps=inject)  # fmt: skip
    chosen = set(inv.values.blocks)
    layers = 4 if isinstance(pipe, FluxPipeline) else 3
    assert chosen == ({3} if blocks == "authors" and solver == "rf-solver" else
                      {2, 3} if blocks == "authors" else set(range(layers)))  # fmt: skip
    ref = RefValues(chosen)
    traj = ref_invert(pipe, scene(), SRC, n, 1.0, solver, ref, inject)
    assert worst(inv.trajectory, traj) <= TOL
    ours = edit(pipe, SRC, [TGT], method="rf-solver", inversion=inv, guidance_scale=guidance)
    theirs = ref_sample(pipe, traj[0], TGT, n, guidance, solver, ref, inject)
    assert (ours.latents[1] - theirs[0]).abs().max().item() <= TOL
    plain = edit(pipe, SRC, [TGT], method="none", inversion=inv, guidance_scale=guidance)
    assert (plain.latents[1] - theirs[0]).abs().max().item() > 100 * TOL
    assert torch.equal(ours.latents[0], inv.trajectory[-1][0])  # the source row: forced


def test_stored_values_are_the_steps_and_calls_an_edit_makes(flux):
    """RF-Solver keeps both calls of the first N steps; FireFlow only midpoint calls (its
    later steps make no first-order call, and its inversion's first-order call is the last
    interval's); V of the whole joint sequence, every head."""
    inv = solver_invert(flux, scene(), SRC, num_steps=4, inject_steps=2, store_values="all")
    keys = set(inv.values.tensors)
    assert keys == {(i, p, b) for i in (0, 1) for p in ("first", "mid") for b in range(4)}
    config, tokens = flux.transformer.config, (128 // 16) ** 2 + _encode(flux, SRC)[0].shape[1]
    assert inv.values.tensors[(0, "mid", 3)].shape == (
        1, config.num_attention_heads, tokens, config.attention_head_dim
    )  # fmt: skip
    fire = solver_invert(flux, scene(), SRC, num_steps=4, solver="fireflow", inject_steps=4)
    assert set(fire.values.tensors) == {(i, "mid", b) for i in range(4) for b in (2, 3)}


def test_identity_edit_returns_the_source(flux, sd3):
    """Target = source = the inversion's prompt at the inversion's guidance: the source row is
    the encoded image exactly and the target comes back to it about as closely as the plain
    reconstruction (which it is, where nothing is injected)."""
    for pipe in (flux, sd3):
        inv = solver_invert(pipe, scene(), SRC, num_steps=8)
        same = edit(pipe, SRC, [SRC], method="rf-solver", inversion=inv, guidance_scale=1.0)
        none = edit(pipe, SRC, [SRC], method="none", inversion=inv, guidance_scale=1.0)
        assert torch.equal(same.latents[0], inv.trajectory[-1][0])
        image = inv.trajectory[-1][0]
        recon = (none.latents[1] - image).abs().max().item()
        assert (same.latents[1] - image).abs().max().item() <= 2 * recon + 1e-3
        assert recon <= 0.1 * image.abs().max().item()
        rows = edit(pipe, SRC, [SRC], method="rf-solver", inversion=inv, guidance_scale=1.0,
                    inject_steps=0)  # fmt: skip
        torch.testing.assert_close(rows.latents[1], none.latents[1])


def test_rf_solver_blocks_rule():
    """FLUX.1-dev (19 double + 38 single): single blocks 20-37; toy-flux (4 + 8): 4-7;
    tiny-flux (2 + 2): 1; SD3 (no single blocks): the last 18/38 of its joint blocks."""

    def table(double: int, single: int) -> list[SimpleNamespace]:
        places = ["joint"] * double + ["single"] * single
        return [SimpleNamespace(index=i, place=p) for i, p in enumerate(places)]

    assert rf_solver_blocks(table(19, 38)) == list(range(19 + 20, 19 + 38))
    assert rf_solver_blocks(table(4, 8)) == [8, 9, 10, 11]
    assert rf_solver_blocks(table(2, 2)) == [3]
    assert rf_solver_blocks(table(24, 0)) == list(range(13, 24))


# -- refusals -----------------------------------------------------------------------------------
def test_bad_options_are_refused(flux, sd3, tiny_pipe):
    with pytest.raises(ValueError, match="solver='heun': use one of rf-solver, fireflow"):
        solver_invert(flux, scene(), solver="heun")
    with pytest.raises(ValueError, match="inject_steps=5: use 0 to 4"):
        solver_invert(flux, scene(), num_steps=4, inject_steps=5)
    with pytest.raises(NotImplementedError, match="solver_invert needs a flow model"):
        solver_invert(tiny_pipe, np.zeros((64, 64, 3), dtype=np.uint8))
    euler = flow_invert(sd3, scene(), SRC, num_steps=2)
    with pytest.raises(ValueError, match=r"got a euler inversion without any: .*solver_invert"):
        edit(sd3, SRC, [TGT], method="rf-solver", inversion=euler)
    with pytest.raises(ValueError, match=r"got no inversion .*store_values="):
        edit(sd3, SRC, [TGT], method="rf-solver", num_steps=2)
    bare = solver_invert(sd3, scene(), SRC, num_steps=2, store_values=None)
    with pytest.raises(ValueError, match="rf-solver inversion without any"):
        edit(sd3, SRC, [TGT], method="rf-solver", inversion=bare)
    inv = solver_invert(sd3, scene(), SRC, num_steps=3, inject_steps=1)  # stores block 2
    with pytest.raises(ValueError, match="inject_steps=2, but the inversion stored 1 steps"):
        edit(sd3, SRC, [TGT], method="rf-solver", inversion=inv, inject_steps=2)
    with pytest.raises(ValueError, match=r"layers \[0\] were not stored .*stored \[2\]"):
        edit(sd3, SRC, [TGT], method="rf-solver", inversion=inv, layers=0)
    with pytest.raises(ValueError, match="option 'step_fraction' does not apply to rf-solver"):
        get_method("rf-solver").controllers(step_fraction=0.5)


def test_reconstruct_and_settings_name_the_solver(sd3):
    from editing.inversion import reconstruct

    inv = solver_invert(sd3, scene(), SRC, num_steps=3, solver="fireflow")
    assert reconstruct(sd3, inv).size == (128, 128)
    out = edit(sd3, SRC, [TGT], method="rf-solver", inversion=inv, guidance_scale=2.0)
    assert out.settings["inversion"] == "fireflow" and out.settings["method"] == "rf-solver"
    assert list(itertools.islice(inv.values.tensors, 1))  # something stored
