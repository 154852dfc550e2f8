"""``attnprobe edit``: edit a generated or real image with any registered method (FPE,
Prompt-to-Prompt, MasaCtrl, ...), or a real image with an inversion-free one (FlowEdit)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from editing.methods.registry import SOURCE_BRANCHES, edit_methods, get_method, method_names
from probe.cli.args import add_model_arg, default_model, loading_options


def method_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The method's keywords given on the command line, converted: ``layers``,
    ``step_fraction`` and the method's options, only those given (``edit()`` fills in the
    defaults from the registry).

    Raises:
        ValueError: a flag the chosen ``--method`` does not take (named as the flag), or a bad
            value.
    """
    method = get_method(args.method)
    given: dict[str, Any] = {"layers": args.layers, "step_fraction": args.step_fraction}
    for m in edit_methods():
        for opt in m.options:
            given[opt.name] = getattr(args, _dest(opt.name))
    given = {k: v for k, v in given.items() if v is not None}
    method.check_given(given, cli=True)
    resolved = method.resolve(**given)  # bad values fail here, before a model is loaded
    return {k: resolved[k] for k in given}


def check_layer_specs(model: str, kwargs: dict[str, Any]) -> None:
    """Resolve every layer spec among the method's arguments (``layers``, ``mask_layers``,
    ``blend_layers``, ...) against the model's layer table built from its config alone, so
    that a typo fails in a second, before the weights load or an image is inverted.

    Raises:
        ValueError: a spec that names no layer of this model; the message lists what it has.
        FileNotFoundError: the model is neither built in nor a folder.
    """
    specs = {k: v for k, v in kwargs.items() if k == "layers" or k.endswith("_layers")}
    if not specs:
        return
    from probe.attention.layers import resolve_layers
    from probe.models import layer_table

    table = layer_table(model)
    for name, spec in specs.items():
        try:
            resolve_layers(table, spec)
        except ValueError as err:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} {spec}: {err}") from err


def _cmd_edit(args: argparse.Namespace) -> int:
    from editing.editor import edit
    from probe.models import load_pipeline
    from probe.models.vocabulary import check_known_words

    if get_method(args.method).edits_image:
        return _edit_image_itself(args)
    kwargs = method_arguments(args) | _source_branch_arguments(args)
    check_layer_specs(args.model or default_model(), kwargs)  # before the model loads
    pipe = load_pipeline(args.model or default_model(), **loading_options(args))
    check_known_words(pipe, [args.source, *args.target])  # before an inversion is spent
    inversion = _invert(pipe, args) if args.image else None
    result = edit(
        pipe, args.source, args.target, method=args.method, seed=args.seed or 0,
        num_steps=args.num_steps, guidance_scale=args.guidance, inversion=inversion,
        source_guidance_scale=args.source_row_guidance, **kwargs,
    )  # fmt: skip
    settings = {**result.settings, "model": args.model or default_model(), "image": args.image}
    settings |= {"dtype": args.dtype, "offload": args.offload}
    _save(args, result.source, result.targets, settings)
    return 0


def _save(args: argparse.Namespace, source: Any, targets: list[Any], settings: dict) -> None:
    """source.png, target_K.png, grid.png and settings.json in ``--out``."""
    from probe.viz.grid import image_grid

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source.save(out / "source.png")
    for k, image in enumerate(targets):
        image.save(out / f"target_{k}.png")
    labels = [args.source, *args.target]
    image_grid([source, *targets], labels).savefig(out / "grid.png", dpi=100)
    (out / "settings.json").write_text(json.dumps(settings, indent=2))
    print(f"edited {len(targets)} target(s) with {settings['method']}: {out}/")
    names = [f"target_{k}.png" for k in range(len(targets))]
    print(f"  source.png, {', '.join(names)}, grid.png, settings.json")


def _edit_image_itself(args: argparse.Namespace) -> int:
    """An inversion-free method (FlowEdit): each target edited from ``--image`` directly; the
    source image is saved as read.

    Raises:
        ValueError: no ``--image``, or a flag of the inversion path (``--inversion``,
            ``--nudge``, ``--source-branch``, ``--source-branch-prompt``, ``--guidance``).
    """
    from editing.inversion import load_image
    from editing.methods.flowedit import flowedit
    from probe.models import load_pipeline
    from probe.models.vocabulary import check_known_words

    options = method_arguments(args)
    if not args.image:
        raise ValueError(f"--method {args.method} edits a real image: add --image IMAGE")
    flags = {"--inversion": args.inversion is not None, "--nudge": args.nudge != 1.0,
             "--source-branch": args.source_branch is not None,
             "--source-branch-prompt": args.source_branch_prompt is not None,
             "--source-row-guidance": args.source_row_guidance is not None}  # fmt: skip
    flags |= {f"--{n.replace('_', '-')}": getattr(args, n) is not None for n in _RF_FLAGS}
    given = [flag for flag, present in flags.items() if present]
    if given:
        raise ValueError(
            f"{', '.join(given)}: --method {args.method} inverts nothing and has no source "
            "branch; leave them out"
        )
    if args.guidance is not None:
        raise ValueError(
            f"--guidance: --method {args.method} guides its source and target velocities "
            "apart: give --source-guidance and --target-guidance"
        )
    model = args.model or default_model()
    pipe = load_pipeline(model, **loading_options(args))
    check_known_words(pipe, [args.source, *args.target])
    results = [
        flowedit(pipe, args.image, args.source, target, num_steps=args.num_steps,
                 seed=args.seed, **image_size(args.image), **options)
        for target in args.target
    ]  # fmt: skip
    h, w = results[0].settings["height"], results[0].settings["width"]
    source = load_image(args.image, (w, h))
    settings = {"method": args.method, "source": args.source, "targets": list(args.target),
                "model": model, "image": args.image, "real_image": True, "inversion": None,
                "edits": [r.settings for r in results]}  # fmt: skip
    _save(args, source, [r.image for r in results], settings)
    return 0


def _source_branch_prompt(args: argparse.Namespace) -> str:
    """``empty`` or ``source``: ``--source-branch-prompt``, else the method's authors' choice."""
    if args.source_branch_prompt is not None:
        return str(args.source_branch_prompt)
    default = get_method(args.method).source_prompt_on_real_image
    return "source" if default == "source" else "empty"


def _source_branch_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """``source_branch`` and ``source_branch_prompt`` for ``edit()``, checked before a model
    is loaded.

    Raises:
        ValueError: a source-branch flag without ``--image``, or ``--source-branch-prompt
            empty`` with null-text inversion (its embeddings are fitted to the source prompt).
    """
    named = (("--source-branch", args.source_branch),
             ("--source-branch-prompt", args.source_branch_prompt))  # fmt: skip
    flags = [flag for flag, value in named if value is not None]
    if not args.image:
        if flags:
            raise ValueError(f"{' and '.join(flags)} only apply to a real image: add --image")
        return {}
    if args.inversion == "null-text" and args.source_branch_prompt == "empty":
        raise ValueError(
            "--source-branch-prompt empty does not apply to --inversion null-text: its "
            "embeddings are optimised for the source prompt; leave the flag out"
        )
    # the CLI inverts with the prompt the source branch runs on (see _invert)
    return {"source_branch": args.source_branch, "source_branch_prompt": "inversion"}


FLOW_INVERSIONS = ("euler", "rf-inversion", "rf-solver", "fireflow")
"""``--inversion`` choices of flow models (SD3, Flux)."""
_RF_FLAGS = ("gamma", "eta", "eta_start", "eta_stop")


def _invert(pipe: Any, args: argparse.Namespace) -> Any:
    """``--image``'s inversion. ``ddim``: DDIM with the prompt the source branch will run on
    (the empty prompt by default, the official FPE and MasaCtrl path; the source prompt for
    Prompt-to-Prompt or ``--source-branch-prompt source``). ``null-text``: the pivot is DDIM
    with the *source* prompt at guidance 1, then null-text optimisation at the edit's guidance
    (as ``null_text_w_ptp.ipynb``). On flow models: ``euler`` (inverse Euler, Stable Flow's;
    the default there), ``rf-inversion`` (RF-Inversion's controlled ODE), ``rf-solver`` and
    ``fireflow`` (second-order; they store the values an ``rf-solver`` edit injects)."""
    from editing.inversion import ddim_invert
    from probe.families import family_of

    inversion = args.inversion
    if inversion is None:  # SD3, Flux: inverse Euler on the flow (editing.flow_inversion)
        inversion = "euler" if "ddim inversion" in family_of(pipe).unsupported else "ddim"
    _check_inversion_flags(args, inversion)
    _check_inversion_family(family_of(pipe), inversion)
    prompt = args.source if _source_branch_prompt(args) == "source" else ""
    if inversion in FLOW_INVERSIONS:
        return _flow_invert(pipe, args, inversion, prompt)
    if inversion != "null-text":
        return ddim_invert(pipe, args.image, prompt=prompt, num_steps=args.num_steps)
    from editing.null_text import null_text_invert

    pivot = ddim_invert(pipe, args.image, prompt=args.source, num_steps=args.num_steps)
    return null_text_invert(pipe, pivot, args.source, args.guidance)


def _flow_invert(pipe: Any, args: argparse.Namespace, inversion: str, prompt: str) -> Any:
    """``--image`` inverted at its own size (:func:`image_size`)."""
    size = image_size(args.image)
    if inversion == "euler":
        from editing.flow_inversion import flow_invert

        return flow_invert(pipe, args.image, prompt, args.num_steps, nudge=args.nudge, **size)
    if inversion == "rf-inversion":
        from editing.rf_inversion import rf_invert

        given = {"gamma": args.gamma, "eta": args.eta, "start": args.eta_start,
                 "stop": args.eta_stop}  # fmt: skip
        kwargs = {k: v for k, v in given.items() if v is not None}
        return rf_invert(pipe, args.image, prompt, args.num_steps, **kwargs, **size)
    from editing.rf_solver import solver_invert

    inject = getattr(args, _dest("inject_steps"), None)  # store as many steps as injected
    return solver_invert(pipe, args.image, prompt, args.num_steps, solver=inversion,
                         inject_steps=None if inject is None else int(inject), **size)  # fmt: skip


def image_size(image: str) -> dict[str, int]:
    """``height`` and ``width`` of the image file ``image``: SD3 and Flux edit a real image at
    its own size, as FlowEdit's and RF-Solver's scripts do (a side the VAE and the patches do
    not divide is refused with the crop that fixes it). Empty where the file cannot be read:
    the inversion's reader then says why.

    Example:
        >>> image_size("car512.png")
        {'height': 512, 'width': 512}
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image) as opened:
            width, height = opened.size
    except (OSError, UnidentifiedImageError):
        return {}
    return {"height": height, "width": width}


def _check_inversion_family(family: Any, inversion: str) -> None:
    """Refuse an inversion the model's family cannot take, naming the ones it can.

    Raises:
        ValueError: DDIM or null-text on a flow model (SD3, Flux), a flow inversion elsewhere.
    """
    flow = "ddim inversion" in family.unsupported
    if flow and inversion not in FLOW_INVERSIONS:
        raise ValueError(
            f"--inversion {inversion} does not apply to {family.title}, a flow model: use "
            f"--inversion {'|'.join(FLOW_INVERSIONS)}, or --method flowedit (no inversion)"
        )
    if not flow and inversion in FLOW_INVERSIONS:
        raise ValueError(
            f"--inversion {inversion} inverts a flow model (SD3, Flux); {family.title} is "
            "DDIM-inverted: use --inversion ddim or null-text"
        )


def _check_inversion_flags(args: argparse.Namespace, inversion: str) -> None:
    """Refuse an inversion's flag given with another inversion.

    Raises:
        ValueError: ``--nudge`` without ``--inversion euler``; ``--gamma``/``--eta``/
            ``--eta-start``/``--eta-stop`` without ``--inversion rf-inversion``.
    """
    if args.nudge != 1.0 and inversion != "euler":
        raise ValueError(
            f"--nudge only applies to --inversion euler (SD3, Flux), not {inversion}: leave it out"
        )
    given = [f"--{name.replace('_', '-')}" for name in _RF_FLAGS if getattr(args, name) is not None]
    if given and inversion != "rf-inversion":
        raise ValueError(
            f"{', '.join(given)} only apply to --inversion rf-inversion, not {inversion}: "
            "leave them out or add --inversion rf-inversion"
        )


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``edit`` to the ``attnprobe`` command line."""
    p = sub.add_parser("edit", help="edit an image from a source prompt to target prompts")
    add_model_arg(p, device=True)
    p.add_argument("--source", required=True, help="source prompt, e.g. 'a red car'")
    p.add_argument("--target", required=True, action="append", help="target prompt (repeatable)")
    _add_method_args(p)
    p.add_argument(
        "--seed", type=int, default=None,
        help="seed of the shared initial noise (default 0); of FlowEdit's noise draws "
        "(default: the authors', 42 on SD3, 10 on Flux)",
    )  # fmt: skip
    p.add_argument("--num-steps", type=int, default=None, help="default: the model's")
    p.add_argument("--guidance", type=float, default=None, help="default: the model's")
    p.add_argument(
        "--source-row-guidance", type=float, default=None, metavar="G",
        help="the source row's own guidance, the targets' staying --guidance (default: the "
        "method's authors' on a real image, Stable Flow's 1; else --guidance)",
    )  # fmt: skip
    p.add_argument(
        "--image", default=None,
        help="a real image to edit (inverted first); SD3 and Flux edit it at its own size, "
        "other models at theirs",
    )  # fmt: skip
    p.add_argument(
        "--inversion", default=None, choices=("ddim", "null-text", *FLOW_INVERSIONS),
        help="for --image: DDIM inversion with the empty prompt (FPE's official path), "
        "null-text inversion (Prompt-to-Prompt's: pivot = DDIM with --source, guidance 1); on "
        "SD3 and Flux: euler (inverse Euler, Stable Flow's), rf-inversion (RF-Inversion's "
        "controlled ODE: --gamma, --eta, --eta-start, --eta-stop), rf-solver or fireflow "
        "(second order; they store the values --method rf-solver injects; default steps the "
        "authors': 25, 8). Default: ddim, euler on SD3 and Flux",
    )  # fmt: skip
    p.add_argument(
        "--nudge", type=float, default=1.0,
        help="for --inversion euler: multiply the encoded image by this first (Stable Flow's "
        "latent nudging: 1.15; default 1)",
    )  # fmt: skip
    rf = p.add_argument_group(
        "--inversion rf-inversion",
        "RF-Inversion (Rout et al.; the authors' defaults: editing.rf_inversion)",
    )
    rf.add_argument("--gamma", type=float, default=None, metavar="G",
                    help="forward controller strength (default 0.5)")  # fmt: skip
    rf.add_argument("--eta", type=float, default=None, metavar="E",
                    help="reverse controller strength (default 0.9)")  # fmt: skip
    rf.add_argument("--eta-start", type=float, default=None, metavar="F",
                    help="first fraction of steps controlled (default 0)")  # fmt: skip
    rf.add_argument("--eta-stop", type=float, default=None, metavar="F",
                    help="fraction of steps where it stops (default 7/28)")  # fmt: skip
    p.add_argument(
        "--source-branch", default=None, choices=SOURCE_BRANCHES,
        help="for --image: forced = the source row put onto the inverted latents every step "
        "(FPE's code); free = denoised like the targets (MasaCtrl's, Prompt-to-Prompt's); "
        "direct = forced, and the same correction added to the targets (Ju et al.'s direct "
        "inversion variant). Default: the method's (" + _defaults("source_on_real_image")
        + "); free after null-text",
    )  # fmt: skip
    p.add_argument(
        "--source-branch-prompt", default=None, choices=("empty", "source"),
        help="for --image: the prompt the image is DDIM-inverted with and the source row runs "
        "on: empty (the FPE and MasaCtrl code) or --source (Prompt-to-Prompt). Default: the "
        "method's (" + _defaults("source_prompt_on_real_image") + "); source after null-text",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_edit)


def _defaults(field: str) -> str:
    names = {"inversion": "empty", "source": "source"}
    values = [(m.name, getattr(m, field)) for m in edit_methods()]
    return ", ".join(f"{name} {names.get(value, value)}" for name, value in values)


def _dest(option: str) -> str:
    return f"method_option_{option}"


def _add_method_args(p: argparse.ArgumentParser) -> None:
    """``--method``, ``--layers``, ``--step-fraction`` and one flag group per method, all from
    the registry (:mod:`editing.methods.registry`)."""
    methods = edit_methods()
    layered = [f"{m.name}: {m.default_layers}" for m in methods if m.uses_layers]
    stepped = [f"{m.name}: {m.default_step_fraction:g}" for m in methods if m.uses_step_fraction]
    p.add_argument(
        "--method", default="fpe", choices=method_names(),
        help="the edit method (default fpe); each one's options are in its group below",
    )  # fmt: skip
    p.add_argument(
        "--layers", default=None,
        help=f"layer spec or selection .json (default {', '.join(layered)}; only for those)",
    )  # fmt: skip
    p.add_argument(
        "--step-fraction", type=float, default=None, metavar="F",
        help="edit the first int(F x steps) steps (default "
        f"{', '.join(stepped)}; only for those)",
    )  # fmt: skip
    seen: set[str] = set()
    for m in methods:
        group = p.add_argument_group(f"--method {m.name}", _method_text(m))
        for opt in m.options:
            if opt.name in seen:  # the registry keeps one meaning per option name
                continue
            seen.add(opt.name)
            authors = f"; authors: {opt.authors_default}" if opt.authors_default else ""
            group.add_argument(
                opt.flag, dest=_dest(opt.name), default=None, choices=opt.choices,
                action="append" if opt.repeatable else "store", metavar=opt.metavar,
                help=f"{opt.help} (default: {_shown(opt.default)}{authors})",
            )  # fmt: skip


def _method_text(m: Any) -> str:
    uses = [f"--layers (default {m.default_layers})"] * m.uses_layers
    uses += [f"--step-fraction (default {m.default_step_fraction:g})"] * m.uses_step_fraction
    takes = f"Takes {' and '.join(uses)}." if uses else "Takes no --layers, no --step-fraction."
    return f"{m.help}. {takes}"


def _shown(value: Any) -> str:
    return "none" if value is None else str(value)
