"""The one registry of edit methods: name, help, controllers and the options each one takes.

:func:`editing.editor.edit`, the ``attnprobe edit`` command line (its ``--method`` choices, its
help and one flag group per method) and the sweep's kinds all read it.

    from editing.methods.registry import get_method, method_names
    method_names()                                   # ('fpe', 'cross', 'p2p', 'masactrl', 'none')
    get_method("p2p").controllers(mode="reweight", weights={"car": 2.0})
    get_method("masactrl").controllers(layers="2-12")  # ValueError: masactrl takes no layers

An option a method does not take is refused, never ignored. Importing this module is cheap
(no torch): the factories import their controllers when called, so ``attnprobe edit --help``
builds its flags from here without loading a model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from editing.methods.options import (
    MethodOption,
    choice,
    cli_flag,
    fraction,
    image_path,
    integer,
    optional_word,
    positive,
    text,
    unit,
    words,
)
from editing.methods.p2p_options import parse_cross_steps, parse_weights
from probe.attention.steps import as_step_fraction

if TYPE_CHECKING:
    from probe.attention.controller import Controller
    from probe.attention.layer_info import LayerSpec

# keywords of edit() itself and of the command line: no method option may take these names
RESERVED = frozenset(
    ("layers", "step_fraction", "method", "controllers", "inversion", "seed", "num_steps",
     "guidance_scale", "guidance", "source", "target", "targets", "pipe", "model", "device",
     "image", "out", "source_branch", "source_branch_prompt", "height", "width",
     "micro_conditioning", "source_guidance_scale", "source_row_guidance")
)  # fmt: skip

SOURCE_BRANCHES = ("forced", "free", "direct")
"""How the source row of a real-image edit is sampled (``edit(..., source_branch=)``,
``--source-branch``): ``forced`` onto the inverted latent after every step (the official FPE
code; Ju et al.'s direct inversion, source only), ``free`` (denoised from the inverted noise
like any row: MasaCtrl's and Prompt-to-Prompt's real-image code), ``direct`` (forced, and the
same per-step correction, the inverted latent minus the source's denoised one, added to every
target row: the variant of Ju et al., ICLR 2024, cure-lab/PnPInversion)."""

SOURCE_PROMPTS = ("inversion", "source")
"""The prompt a real image's source row runs on: ``inversion`` (the prompt the image was
inverted with; the empty prompt by default, as the FPE and MasaCtrl code) or ``source`` (the
edit's source prompt, as Prompt-to-Prompt inverts and samples)."""


@dataclass(frozen=True)
class EditMethod:
    """One edit method and everything the library and the CLI need to know about it.

    Attributes:
        name: what ``method=`` and ``--method`` take.
        help: one line.
        build: the factory: keywords ``layers`` and ``step_fraction`` (where used) and every
            option, all filled in; returns the controllers.
        options: the method's own options.
        uses_layers: takes ``layers`` / ``--layers``.
        uses_step_fraction: takes ``step_fraction`` / ``--step-fraction``.
        default_layers: the layer spec when none is given.
        default_step_fraction: the step fraction when none is given.
        authors_layers, authors_step_fraction: the published defaults, if any.
        sweep_kind: the sweep kind this method implements (``self``, ``cross``, ``inject``),
            if any.
        source_on_real_image: the source branch of a real-image edit after DDIM inversion
            (one of :data:`SOURCE_BRANCHES`), as the method's authors run it.
        source_prompt_on_real_image: the prompt that source branch runs on (one of
            :data:`SOURCE_PROMPTS`), as the authors run it.
        source_guidance_on_real_image: the source row's own guidance on a real image, where
            the authors give it one apart from the targets' (Stable Flow: 1), else ``None``
            (every row at ``guidance_scale``).
        edits_image: the method edits a real image itself, without an inversion and without
            controllers (FlowEdit): ``edit()`` refuses it and points to its own function;
            ``attnprobe edit --method NAME --image`` runs it.
    """

    name: str
    help: str
    build: Callable[..., list[Controller]]
    options: tuple[MethodOption, ...] = ()
    uses_layers: bool = True
    uses_step_fraction: bool = True
    default_layers: LayerSpec = None
    default_step_fraction: float = 0.8
    authors_layers: str | None = None
    authors_step_fraction: str | None = None
    sweep_kind: str | None = None
    source_on_real_image: str = "forced"
    source_prompt_on_real_image: str = "inversion"
    source_guidance_on_real_image: float | None = None
    edits_image: bool = False

    def __post_init__(self) -> None:
        if self.source_on_real_image not in SOURCE_BRANCHES[:2]:
            raise ValueError(
                f"{self.name}: source_on_real_image={self.source_on_real_image!r}: use "
                "'forced' or 'free' ('direct' is an option of edit(), not a method default)"
            )
        if self.source_prompt_on_real_image not in SOURCE_PROMPTS:
            raise ValueError(
                f"{self.name}: source_prompt_on_real_image={self.source_prompt_on_real_image!r}: "
                f"use one of {', '.join(SOURCE_PROMPTS)}"
            )

    def takes(self) -> list[str]:
        """Names of everything the method takes: ``layers``, ``step_fraction``, its options."""
        common = ["layers"] * self.uses_layers + ["step_fraction"] * self.uses_step_fraction
        return common + [o.name for o in self.options]

    def check_given(self, names: Iterable[str], cli: bool = False) -> None:
        """Refuse any name the method does not take.

        Args:
            names: keywords given (``layers``, ``step_fraction``, option names).
            cli: name them as command-line flags (``--start-step``) in the error.

        Raises:
            ValueError: naming the option, the method, what it takes, and who takes it.
        """
        takes = self.takes()
        bad = [name for name in names if name not in takes]
        if not bad:
            return
        name = bad[0]
        say = cli_flag if cli else str
        listed = f"it takes: {', '.join(say(n) for n in takes)}" if takes else "it takes none"
        owners = [m.name for m in _REGISTRY.values() if name in m.takes()]
        where = f"; {say(name)} is taken by {', '.join(owners)}" if owners else ""
        if cli:
            msg = f"{say(name)} does not apply to --method {self.name}"
        else:
            msg = f"option {name!r} does not apply to {self.name}"
        raise ValueError(f"{msg} ({listed}){where}")

    def resolve(
        self, layers: LayerSpec = None, step_fraction: float | None = None, **options: Any
    ) -> dict[str, Any]:
        """Check what was given and fill in the defaults.

        Args:
            layers: a layer spec, or ``None`` (not given).
            step_fraction: a fraction, or ``None`` (not given); an int 1 means 1.0.
            options: the method's options, as Python values or CLI strings.

        Returns:
            The keywords for :attr:`build`: ``layers`` / ``step_fraction`` where used and
            every option, defaults filled in.

        Raises:
            ValueError: an option the method does not take, or a bad value.
        """
        given = [*(["layers"] if layers is not None else [])]
        given += ["step_fraction"] if step_fraction is not None else []
        self.check_given([*given, *options])
        out: dict[str, Any] = {}
        if self.uses_layers:
            out["layers"] = self.default_layers if layers is None else layers
        if self.uses_step_fraction:
            fraction = self.default_step_fraction if step_fraction is None else step_fraction
            out["step_fraction"] = as_step_fraction(fraction)
        for opt in self.options:
            out[opt.name] = opt.convert(options[opt.name]) if opt.name in options else opt.default
        return out

    def controllers(
        self, layers: LayerSpec = None, step_fraction: float | None = None, **options: Any
    ) -> list[Controller]:
        """The method's controllers (see :meth:`resolve` for the arguments)."""
        return self.build(**self.resolve(layers, step_fraction, **options))


_REGISTRY: dict[str, EditMethod] = {}


def register(method: EditMethod) -> EditMethod:
    """Add a method to the registry (``edit()``, ``attnprobe edit`` and the sweep see it).

    Raises:
        ValueError: a name already registered, an option named like a keyword of ``edit()``,
            or an option whose name another method already uses with another meaning.
    """
    if method.name in _REGISTRY:
        raise ValueError(f"edit method {method.name!r} is already registered")
    for opt in method.options:
        if opt.name in RESERVED:
            raise ValueError(f"option {opt.name!r} of {method.name} shadows a keyword of edit()")
        clash = [m.name for m in _REGISTRY.values() for o in m.options if o.name == opt.name]
        if clash and option_spec(opt.name) != opt:
            raise ValueError(
                f"option {opt.name!r} of {method.name} differs from {clash[0]}'s option of that "
                "name: one name, one meaning (the CLI has one flag per name)"
            )
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> EditMethod:
    """The registered method called ``name``.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown edit method {name!r}: use one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def method_names() -> tuple[str, ...]:
    """Every registered method's name, in registration order."""
    return tuple(_REGISTRY)


def edit_methods() -> list[EditMethod]:
    """Every registered method, in registration order."""
    return list(_REGISTRY.values())


def option_spec(name: str) -> MethodOption:
    """The option called ``name`` (of whichever method takes it).

    Raises:
        KeyError: no method takes it.
    """
    for method in _REGISTRY.values():
        for opt in method.options:
            if opt.name == name:
                return opt
    raise KeyError(f"no edit method takes an option {name!r}")


def sweep_kinds() -> dict[str, str]:
    """Sweep kind → the method implementing it: ``{"self": "fpe", "cross": "cross", "inject":
    "stable-flow"}`` (``inject``: Stable Flow's K/V injection, DiTs only)."""
    return {m.sweep_kind: m.name for m in _REGISTRY.values() if m.sweep_kind}


# ---- the methods ---------------------------------------------------------------------------


def _fpe(layers: LayerSpec, step_fraction: float) -> list[Controller]:
    from editing.methods.replace import SelfAttentionReplace

    return [SelfAttentionReplace(layers, step_fraction)]


def _cross(layers: LayerSpec, step_fraction: float) -> list[Controller]:
    from editing.methods.replace import CrossAttentionReplace

    return [CrossAttentionReplace(layers, step_fraction)]


def _p2p(layers: LayerSpec, **options: Any) -> list[Controller]:
    from editing.methods.p2p import prompt_to_prompt

    return list(prompt_to_prompt(cross_layers=layers, **options))


def _masactrl(**options: Any) -> list[Controller]:
    from editing.methods.masactrl import masactrl

    return [masactrl(**options)]


def _stable_flow(layers: LayerSpec, step_fraction: float, injected_half: str) -> list[Controller]:
    from editing.methods.kv_injection import KVInjection

    return [KVInjection(layers, step_fraction, injected_half)]


def _rf_solver(layers: LayerSpec, inject_steps: int | None) -> list[Controller]:
    from editing.methods.value_injection import value_injection

    return value_injection(layers, inject_steps)


def _none() -> list[Controller]:
    return []


def _flowedit(**options: Any) -> list[Controller]:
    raise ValueError(
        "flowedit edits a real image without inversion or controllers: call "
        "editing.methods.flowedit.flowedit(pipe, image, source, target, ...) or "
        "attnprobe edit --method flowedit --image IMAGE"
    )


P2P_NOTEBOOK = "google/prompt-to-prompt, prompt-to-prompt_stable.ipynb"
P2P_NULL_TEXT = "null_text_w_ptp.ipynb"
MASACTRL_CODE = "TencentARC/MasaCtrl, masactrl/masactrl.py"
_MODES = ("replace", "refine", "reweight")
_TAILS = ("authors", "shifted")

register(EditMethod(
    "fpe", "Free-Prompt-Editing: the targets' self-attention uses the source's probabilities",
    _fpe, default_layers="fpe",
    authors_layers="query maps of <= 32x32 positions at any size = preset fpe (positions<=1024 "
    "on SD; carried to the toy: positions<=64); FPE code",
    authors_step_fraction="0.8 (self_replace_steps; FPE code)", sweep_kind="self",
    # edit_real.ipynb: inverted with "", the source row set to the inverted latents every step
    source_on_real_image="forced", source_prompt_on_real_image="inversion",
))  # fmt: skip
register(EditMethod(
    "cross", "the targets' cross-attention uses the source's maps (same token positions)",
    _cross, default_layers="all", sweep_kind="cross",
    # attnprobe's own: the maps are matched by token position, so the source row reads its words
    source_on_real_image="forced", source_prompt_on_real_image="source",
))  # fmt: skip
register(EditMethod(
    "p2p", "Prompt-to-Prompt as published: cross-attention control (replace, refine, "
    "reweight), self-attention replacement in the coarse layers, optional LocalBlend",
    _p2p, default_layers="all", uses_step_fraction=False,
    authors_layers="all layers' cross-attention; " + P2P_NOTEBOOK,
    # null_text_w_ptp.ipynb: inverted with the source prompt, every row denoised
    source_on_real_image="free", source_prompt_on_real_image="source",
    options=(
        MethodOption("mode", choice("mode", _MODES), "replace",
                     "replace: word swap (same word count, word-aware token map); refine: "
                     "aligned tokens read the source's maps; reweight: the source's maps x "
                     "--weights", choices=_MODES),
        MethodOption("cross_steps", parse_cross_steps, 0.8,
                     "cross_replace_steps over N+1 alpha rows: a fraction, a window 0.2,0.8, "
                     "or per word default_=1.0,lion=0.4",
                     authors_default="0.8 (cross_replace_steps; " + P2P_NOTEBOOK + ")",
                     metavar="F|A,B|W=F,..."),
        MethodOption("self_steps", fraction("self_steps"), 0.4,
                     "self-attention replaced for the first int(F x N) steps",
                     authors_default="0.4 (self_replace_steps; " + P2P_NOTEBOOK + ")",
                     metavar="F"),
        MethodOption("self_threshold", integer("self_threshold", 1), 16,
                     "self-attention replaced where the query map has <= N x N positions "
                     "(absolute; on the 16x16-latent toy 16 is every layer)",
                     authors_default="16 (" + P2P_NOTEBOOK + "); 32 (" + P2P_NULL_TEXT + ")",
                     metavar="N"),
        MethodOption("weights", parse_weights, None,
                     "word=factor equalizer on the source's maps, repeatable or comma-separated "
                     "(e.g. car=2.0,red=0.5)", repeatable=True, metavar="WORD=F"),
        MethodOption("blend", words("blend"), None,
                     "LocalBlend words (repeatable): targets stay the source outside their region",
                     repeatable=True, metavar="WORD"),
        MethodOption("blend_subtract", words("blend_subtract"), None,
                     "words whose region LocalBlend cuts out of the mask (repeatable)",
                     authors_default="none; substruct_words in " + P2P_NULL_TEXT,
                     repeatable=True, metavar="WORD"),
        MethodOption("blend_threshold", unit("blend_threshold"), 0.3,
                     "LocalBlend: the normalised map must exceed this",
                     authors_default="0.3 (" + P2P_NOTEBOOK + ")", metavar="T"),
        MethodOption("blend_start", fraction("blend_start"), 0.0,
                     "LocalBlend from step int(F x N) on",
                     authors_default="0 (" + P2P_NOTEBOOK + "); 0.2 (" + P2P_NULL_TEXT + ")",
                     metavar="F"),
        MethodOption("blend_layers", text("blend_layers"), "res==max/4",
                     "layer spec of the maps LocalBlend reads, one resolution; res==max/4 is "
                     "a quarter of the latent's side, the authors' 16x16 at 512 px",
                     authors_default="the 16x16 layers at 512 px, mid excluded (" + P2P_NOTEBOOK
                     + ")", metavar="SPEC"),
        MethodOption("swap_tail", choice("swap_tail", _TAILS), "authors",
                     "word swap, tokens after the last swapped word: authors (position j reads "
                     "j, as published) or shifted (the token it lines up with)",
                     authors_default="authors (seq_aligner.py)", choices=_TAILS),
    ),
))  # fmt: skip
register(EditMethod(
    "masactrl", "MasaCtrl: from a start step and layer, target queries read the source's "
    "keys and values in self-attention",
    _masactrl, uses_layers=False, uses_step_fraction=False,
    # playground_real.ipynb: inverted with "", ref_intermediate_latents (forcing) commented out
    source_on_real_image="free", source_prompt_on_real_image="inversion",
    options=(
        MethodOption("start_step", integer("start_step"), 4, "first step edited",
                     authors_default="4 (" + MASACTRL_CODE + ")", metavar="N"),
        MethodOption("start_layer", integer("start_layer"), None,
                     "first layer edited (0-based, execution order); every later layer too "
                     "(default: the model's, the first of preset masactrl: 10 on SD, 44 on SDXL)",
                     authors_default="10 of 16 (" + MASACTRL_CODE + "); 44 of SDXL's 70 (the "
                     "first of 44, 54, 64 in run_synthesis_sdxl.py)", metavar="N"),
        MethodOption("mask_word", optional_word("mask_word"), None,
                     "mask from this source word's cross-attention: foreground queries read the "
                     "source's foreground, background its background",
                     authors_default="none; MutualSelfAttentionControlMaskAuto(ref_token_idx=[1]) "
                     "in " + MASACTRL_CODE, metavar="WORD"),
        MethodOption("mask_target_word", optional_word("mask_target_word"), None,
                     "the object's word in the targets (default: --mask-word)",
                     authors_default="cur_token_idx=[1] (MaskAuto)", metavar="WORD"),
        MethodOption("mask_threshold", unit("mask_threshold"), 0.1,
                     "word mask: the min-max normalised map must reach this",
                     authors_default="0.1 (thres, MaskAuto)", metavar="T"),
        MethodOption("mask_layers", text("mask_layers"), "res==max/4",
                     "word mask: the cross-attention maps read, one resolution (default: a "
                     "quarter of the latent's side; positions==256 is the authors' literal 16x16)",
                     authors_default="the 16x16 maps at 512 px (MaskAuto)", metavar="SPEC"),
        MethodOption("mask", image_path("mask"), None,
                     "mask image of the object in the source (white = object)",
                     authors_default="none; mask_s of MutualSelfAttentionControlMask",
                     metavar="PNG"),
        MethodOption("mask_target", image_path("mask_target"), None,
                     "mask image of the object in the targets (default: --mask)",
                     authors_default="mask_t (MutualSelfAttentionControlMask)", metavar="PNG"),
    ),
))  # fmt: skip
_FLOWEDIT = "fallenshock/FlowEdit, SD3_exp.yaml / FLUX_exp.yaml"
register(EditMethod(
    "flowedit", "FlowEdit (SD3, Flux): a real image edited without inversion, along the "
    "difference of the target's and the source's velocities",
    _flowedit, uses_layers=False, uses_step_fraction=False, edits_image=True,
    options=(
        MethodOption("n_max", integer("n_max"), None,
                     "steps run: the first num_steps - N are skipped (default: the family's "
                     "authors')", authors_default="33 of 50 on SD3, 24 of 28 on FLUX.1-dev ("
                     + _FLOWEDIT + ")", metavar="N"),
        MethodOption("n_min", integer("n_min"), None,
                     "the last N steps sample plainly from the edited latent (default: the "
                     "authors')", authors_default="0 (" + _FLOWEDIT + ")", metavar="N"),
        MethodOption("n_avg", integer("n_avg", 1), None,
                     "noise draws averaged per step (default: the authors')",
                     authors_default="1 (" + _FLOWEDIT + ")", metavar="N"),
        MethodOption("source_guidance", positive("source_guidance", "3.5"), None,
                     "guidance of the source velocity (default: the family's authors')",
                     authors_default="3.5 on SD3, 1.5 on FLUX.1-dev (" + _FLOWEDIT + ")",
                     metavar="G"),
        MethodOption("target_guidance", positive("target_guidance", "13.5"), None,
                     "guidance of the target velocity (default: the family's authors')",
                     authors_default="13.5 on SD3, 5.5 on FLUX.1-dev (" + _FLOWEDIT + ")",
                     metavar="G"),
    ),
))  # fmt: skip
_STABLE_FLOW = "snap-research/stable-flow, run_stable_flow.py"
_HALVES = ("cond", "both")
register(EditMethod(
    "stable-flow", "Stable Flow (SD3, Flux): in the vital blocks, the targets' image-token keys "
    "and values are the source's, every step",
    _stable_flow, default_layers="vital", default_step_fraction=1.0, sweep_kind="inject",
    authors_layers="FLUX.1-dev's vital blocks 0, 1, 17, 18 (double), 25, 28, 53, 54, 56 "
    "(single), counted 0-56 = preset vital; another model: vital_blocks in its attnprobe.json ("
    + _STABLE_FLOW + ")",
    authors_step_fraction="1.0 (every step; " + _STABLE_FLOW + ")",
    # invert_and_save: inverted with the source prompt at guidance 1, the reference row put
    # back on the inverted latents after every step, and denoised at guidance 1 (the edits: 3)
    source_on_real_image="forced", source_prompt_on_real_image="source",
    source_guidance_on_real_image=1.0,
    options=(
        MethodOption("injected_half", choice("injected_half", _HALVES), "cond",
                     "with unconditional rows (SD3, a true-CFG Flux): inject the conditional "
                     "targets only, or both halves each from its own source",
                     authors_default="cond (JointAttnProcessor2_0 of their fork: the second "
                     "half of the batch); FLUX.1-dev has no unconditional rows",
                     choices=_HALVES),
    ),
))  # fmt: skip
_RF_SOLVER = "wangjiangshan0725/RF-Solver-Edit, FLUX_Image_Edit/src"
_FIREFLOW = "HolmesShuan/FireFlow-Fast-Inversion-of-Rectified-Flow-for-Image-Semantic-Editing"
register(EditMethod(
    "rf-solver", "RF-Solver-Edit / FireFlow value injection (Flux; SD3): in the first steps the "
    "targets' values in chosen blocks are those stored while inverting (solver_invert)",
    _rf_solver, default_layers=None, uses_step_fraction=False,
    authors_layers="single-stream blocks 20-37 of FLUX.1-dev's 38 (" + _RF_SOLVER + "); all 38 "
    "in FireFlow's scripts; default: every block the inversion stored (solver_invert's "
    "store_values)",
    # edit.py: inverted with the source prompt at guidance 1; the edit denoises the target alone
    source_on_real_image="forced", source_prompt_on_real_image="inversion",
    options=(
        MethodOption("inject_steps", integer("inject_steps"), None,
                     "inject in the first N steps (default: every step the inversion stored)",
                     authors_default="5 of 25 (--inject, " + _RF_SOLVER + " README); 1 of 8 ("
                     + _FIREFLOW + " scripts)", metavar="N"),
    ),
))  # fmt: skip
register(EditMethod(
    "none", "no control: the plain target image from the shared noise",
    _none, uses_layers=False, uses_step_fraction=False,
))  # fmt: skip
