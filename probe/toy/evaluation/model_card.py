"""Write the toy model's card from a training run and an evaluation.

    python -m probe.toy.evaluation.model_card --run runs/toy_train --eval runs/toy_eval --out {docs}

reads ``RUN/train_config.json``, ``RUN/work/loss.jsonl`` and ``EVAL/evaluation.md`` and
``EVAL/grid.png``, and writes ``OUT/toy_model_card.md`` with the loss curves in
``OUT/images/toy_loss.png`` and the sample grid in ``OUT/images/toy_samples.png``. ``RUN`` may
also be an exported model folder: training keeps its record in ``model/training/``.

The card draws the loss curve of every stage in the log (the contrastive text stage with its
zero-shot accuracies, the VAE, the UNet) and has one training-table row per stage.

Without a loss log, ``--facts FILE`` (JSON: settings plus the final values ``vae_minutes``,
``vae_steps``, ``psnr``, ``unet_minutes``, ``unet_steps``, ``loss``, ``scaling``) fills the
training table, and the card says that the curve is missing instead of drawing one.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

STAGE_TITLES = {
    "text": "Text encoder (contrastive, then frozen)",
    "vae": "VAE",
    "unet": "UNet",
}


def loss_curves(lines: list[dict[str, Any]]) -> Figure:
    """One panel per trained stage in the log, against its step: the contrastive stage's
    InfoNCE loss (and, on a second axis, its zero-shot colour and category accuracy), the VAE's
    reconstruction PSNR, the UNet's ε-MSE. A v1 log (no ``text`` stage) draws two panels."""
    stages = [s for s in STAGE_TITLES if any(x["stage"] == s for x in lines)]
    fig = Figure(figsize=(4.5 * max(1, len(stages)), 3.2))
    axes = fig.subplots(1, max(1, len(stages)), squeeze=False)[0]
    joint = "text" not in stages  # v1: the text encoder trained with the UNet
    for ax, stage in zip(axes, stages, strict=False):
        rows = [x for x in lines if x["stage"] == stage]
        steps = [x["step"] for x in rows]
        if stage == "text":
            _text_panel(ax, rows)
        elif stage == "vae":
            ax.plot(steps, [x["psnr"] for x in rows], lw=1)
            ax.set(ylabel="reconstruction PSNR (dB)")
        else:
            ax.plot(steps, [x["loss"] for x in rows], lw=1)
            ax.set(ylabel="ε-MSE (mean of 50 steps)")
        title = "UNet + text encoder" if stage == "unet" and joint else STAGE_TITLES[stage]
        ax.set(title=title, xlabel="step")
    fig.tight_layout()
    return fig


ZERO_SHOT = {"zero_shot_colour": "zero-shot colour", "zero_shot_category": "zero-shot category"}
"""The contrastive stage's held-out accuracies in the log, with their legend labels."""


def _text_panel(
    ax: Any,
    rows: list[dict[str, Any]],
    accuracies: dict[str, str] = ZERO_SHOT,
    ylabel: str = "held-out accuracy",
) -> None:
    """The contrastive stage: loss on ``ax``, the ``accuracies`` (log key: label) on a twin
    axis, each at the steps that logged it."""
    ax.plot([x["step"] for x in rows], [x["loss"] for x in rows], lw=1, color="C0", label="loss")
    ax.set(ylabel="symmetric InfoNCE")
    if any(key in x for x in rows for key in accuracies):
        acc = ax.twinx()
        for i, (key, label) in enumerate(accuracies.items()):
            evals = [x for x in rows if key in x]
            acc.plot([x["step"] for x in evals], [x[key] for x in evals], lw=1,
                     color=f"C{i + 1}", label=label)  # fmt: skip
        acc.set(ylim=(0, 1.02), ylabel=ylabel)
        acc.legend(loc="center right", fontsize=7)


def _minutes(lines: list[dict[str, Any]], stage: str) -> float:
    times = [x["elapsed_s"] for x in lines if x["stage"] == stage]
    return max(times) / 60 if times else 0.0


def _training_record(run: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Settings and log lines of a run folder or of an exported model folder."""
    for config, log in [
        (run / "train_config.json", run / "work" / "loss.jsonl"),
        (run / "training" / "train_config.json", run / "training" / "loss.jsonl"),
    ]:
        if config.is_file() and log.is_file():
            lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
            return json.loads(config.read_text()), lines
    raise FileNotFoundError(
        f"no training record in {run}: expected train_config.json and work/loss.jsonl "
        "(a run folder) or training/ (an exported model); without one, pass --facts"
    )


def _final_values(lines: list[dict[str, Any]]) -> dict[str, Any]:
    unet = [x for x in lines if x["stage"] == "unet"]
    vae = [x for x in lines if x["stage"] == "vae"]
    text = [x for x in lines if x["stage"] == "text"]
    evals = [x for x in text if "zero_shot_colour" in x]
    judge: dict[str, Any] = next((x for x in lines if x["stage"] == "judge"), {})
    export: dict[str, Any] = next((x for x in lines if x["stage"] == "export"), {})
    return {
        "text_minutes": _minutes(lines, "text"),
        "text_steps": text[-1]["step"] if text else 0,
        "text_loss": text[-1]["loss"] if text else float("nan"),
        "zero_shot_colour": evals[-1]["zero_shot_colour"] if evals else float("nan"),
        "zero_shot_category": evals[-1]["zero_shot_category"] if evals else float("nan"),
        "judge_minutes": judge.get("seconds", 0.0) / 60,
        "judge_accuracy": judge.get("val_accuracy", float("nan")),
        "vae_minutes": _minutes(lines, "vae"),
        "vae_steps": vae[-1]["step"] if vae else 0,
        "psnr": vae[-1]["psnr"] if vae else float("nan"),
        "unet_minutes": _minutes(lines, "unet"),
        "unet_steps": unet[-1]["step"] if unet else 0,
        "loss": unet[-1]["loss"] if unet else float("nan"),
        "scaling": export.get("scaling_factor", float("nan")),
    }


MISSING_CURVE = (
    "*No loss curve*: the loss log of the shipped run was lost with the machine it ran on (the run "
    "folder was not kept). The final values above were noted from that log during the run. "
    "Training now copies its log into the exported model (`model/training/loss.jsonl`), so a "
    "retrained model's card draws the curve."
)


def write_card(run: Path | None, evaluation: Path, out: Path, facts: Path | None = None) -> Path:
    """Write the model card; returns its path.

    Args:
        run: a training run folder or an exported model folder with ``training/``; may be
            ``None`` when ``facts`` is given.
        evaluation: a folder written by ``attnprobe toy evaluate``.
        out: the docs folder.
        facts: JSON with the settings and final values, used when there is no loss log.
    """
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    if run is not None and (facts is None or _has_record(run)):
        cfg, lines = _training_record(run)
        values = _final_values(lines)
        loss_curves(lines).savefig(images / "toy_loss.png", dpi=100)
        curve = "![loss curves](images/toy_loss.png)"
    elif facts is not None:
        given = json.loads(facts.read_text())
        cfg, values = given["settings"], given["final"]
        curve = MISSING_CURVE
    else:
        raise ValueError("write_card needs a run folder with a loss log, or --facts")
    shutil.copy(evaluation / "grid.png", images / "toy_samples.png")
    settings = "\n".join(f"| {k} | {v} |" for k, v in cfg.items() if k != "extra")
    text = CARD.format(
        **_describe(cfg, values),
        sizes=_sizes(run),
        training=_training_rows(cfg, values),
        settings=settings,
        curve=curve,
        table=(evaluation / "evaluation.md").read_text(),
    )
    path = out / "toy_model_card.md"
    path.write_text(text)
    return path


def _describe(cfg: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The card's facts that follow from the settings: world, sizes, how the text encoder
    was trained."""
    from probe.toy.training.sizes import positions_per_layer
    from probe.toy.world.world import get_world

    world = get_world(cfg.get("world", "v1"))
    size, factor = int(cfg.get("image_size", 64)), int(cfg.get("vae_factor", 4))
    latent = size // factor
    sides = [round(n**0.5) for n in positions_per_layer(latent)]
    contrastive = bool(values.get("text_steps"))
    v1 = world.name == "v1"
    return {
        "who": 'The embedded default model of attnprobe (`load_pipeline("toy")`, `--model toy`)'
        if v1
        else f'The embedded toy of world {world.name} (`load_pipeline("toy-v2")`, '
        "`--model toy-v2`)",
        "weights": "models/toy_v1" if v1 else "models/toy_v2",
        "docs": "docs" if v1 else "docs/toy_v2",
        "world": f"world {world.name}: cars and ten animals in {len(world.palette)} colours "
        f"({', '.join(world.palette)})",
        "image_size": size,
        "vae_factor": factor,
        "latent": latent,
        "resolutions": ",".join(map(str, sides)),
        "text_training": TEXT_CONTRASTIVE if contrastive else TEXT_JOINT,
        "scaling": values.get("scaling", float("nan")),
    }


TEXT_CONTRASTIVE = (
    "The text encoder was trained first, as Stable Diffusion's CLIP was: contrastively against a "
    "small image CNN on rendered scenes and their captions (symmetric InfoNCE, learned "
    "temperature; `probe.toy.training.train_text`), then frozen; the VAE and the UNet trained "
    "on it."
)
TEXT_JOINT = (
    "The text encoder was trained jointly with the UNet on the ε-loss (toy v1); Stable "
    "Diffusion's was trained first, contrastively, and frozen."
)


def _sizes(run: Path | None) -> str:
    """The ``attnprobe toy sizes`` table, when the run folder holds its ``sizes.json``."""
    from probe.toy.training.sizes import SizeCost, table

    found = [] if run is None else [run / "sizes.json", run / "training" / "sizes.json"]
    path = next((f for f in found if f.is_file()), None)
    if path is None:
        return ""
    costs = [SizeCost(**c) for c in json.loads(path.read_text())]
    by_latent = {c.latent: c for c in costs}
    why = ""
    if 16 in by_latent and 32 in by_latent:
        ratio = by_latent[32].unet_s_per_step / by_latent[16].unet_s_per_step
        why = (
            f"\nA UNet step at 32×32 latents costs {ratio:.1f}× one at 16×16, so the same "
            f"wall-clock budget would train it {ratio:.1f}× fewer steps, and its latent pool "
            f"takes {by_latent[32].pool_mb / by_latent[16].pool_mb:.0f}× the memory; it would "
            "give the 4×4 and 2×2 layers 4× the positions. The toy stays at 16×16. What 32×32 "
            "changes in the structure kept by all-layer replacement was not measured: that "
            "needs a trained 32×32 model.\n"
        )
    return (
        "\nMeasured here (`attnprobe toy sizes --steps 10 --json sizes.json`, 2 threads, "
        "idle machine):\n\n" + table(costs, 48) + "\n" + why
    )


def _training_rows(cfg: dict[str, Any], values: dict[str, Any]) -> str:
    """Rows of the training table, one per stage that ran."""
    rows = []
    if values.get("judge_minutes"):
        rows.append(
            f"| category judge of the world (CNN on silhouettes) | {values['judge_minutes']:.1f} "
            f"min | {cfg.get('judge_epochs', '')} epochs | validation accuracy "
            f"{values['judge_accuracy']:.3f} |"
        )
    if values.get("text_steps"):
        rows.append(
            f"| text encoder: contrastive (symmetric InfoNCE), then frozen | "
            f"{values['text_minutes']:.1f} min | {values['text_steps']} | loss "
            f"{values['text_loss']:.3f}; zero-shot colour {values['zero_shot_colour']:.1%}, "
            f"category {values['zero_shot_category']:.1%} |"
        )
    rows.append(
        f"| VAE (L1+L2, object ×5, KL 1e-6) | {values['vae_minutes']:.1f} min | "
        f"{values['vae_steps']} | PSNR {values['psnr']:.1f} dB |"
    )
    unet = "UNet on the frozen text encoder" if values.get("text_steps") else "UNet + text encoder"
    rows.append(
        f"| {unet} (EMA 0.999) | {values['unet_minutes']:.1f} min | {values['unet_steps']} | "
        f"ε-MSE {values['loss']:.4f} |"
    )
    return "\n".join(rows)


def _has_record(run: Path) -> bool:
    try:
        _training_record(run)
    except FileNotFoundError:
        return False
    return True


CARD = """# Model card: the toy Stable Diffusion

{who}. It is a
Stable Diffusion 1.x pipeline in every respect that matters to the toolkit — a CLIP-format
tokenizer and CLIP text encoder, an AutoencoderKL, a UNet2DConditionModel with the SD 1.x
topology (CrossAttnDownBlock2D ×3 + DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D +
CrossAttnUpBlock2D ×3: 16 transformer blocks), ε-prediction on the SD DDIM schedule
(scaled_linear 0.00085–0.012) — but small, and trained from scratch on this CPU on the toy world
(`docs/toy_world.md`), {world}, in a park or on a street.

{text_training}

## Vocabulary

Its tokenizer holds exactly the words the model was trained with: every word of the templates
in `data_templates/` and a few common ones, each one token, listed under `attnprobe_words` in
`tokenizer/tokenizer_config.json`. A prompt with any other word is refused — by `record`,
`edit`, `sweep`, `reproduce` and the pipeline's own call — with an error that names the word and
the prompt and lists the words the model knows (`probe.models.vocabulary`): the text encoder
never learned it, and before this check "a white car" silently came out as random-coloured
animals. Real checkpoints take any word; `with probe.allow_unknown_words(pipe):` opts in to see
what the toy makes of one.

## Sizes and why

- {image_size}×{image_size} px images through a **factor-{vae_factor}** VAE:
  {latent}×{latent}×4 latents. Query resolutions per layer (side, layers 0-15):
  {resolutions}. `attnprobe toy sizes` measures what a training step costs at 16×16 and at
  32×32 latents on this machine.
- UNet channels 32/64/64/64 (3.2 M parameters), 4 heads per attention layer; text encoder: 2
  layers, width 64; VAE channels 16/32/32.
- The latent scaling factor was measured on the trained VAE: **{scaling:.3f}** (1/std of the
  pool's latents; SD's 0.18215 would be wrong here).
{sizes}
## Training

| stage | wall time | steps | final |
|---|---:|---:|---|
{training}

Wall time on a 2-core CPU; other jobs shared the machine during part of some stages. Settings:

| setting | value |
|---|---|
{settings}

{curve}

## Evaluation

`attnprobe toy evaluate` generates every prompt of `colour_car`, `animal_park` and
`colour_animal` on held-out seeds at the model's default guidance and steps, and judges each
image with the toy world's judges (object found, colour = nearest palette colour, category =
the shipped silhouette classifier).

{table}

![samples: one image per prompt](images/toy_samples.png)

## Retrain

    attnprobe toy train --out runs/toy_train          # resumable: rerun after an interruption
    attnprobe toy evaluate --model runs/toy_train/model --out runs/toy_eval
    python -m probe.toy.evaluation.model_card --run runs/toy_train --eval runs/toy_eval --out {docs}
    cp -r runs/toy_train/model/* probe/toy/{weights}/   # ship it

The budgets are wall-clock minutes (`--text-minutes`, `--vae-minutes`, `--unet-minutes`); the
learning rate follows a cosine over the budget, so a longer budget is a different schedule, not
just more steps.
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--run", type=Path, help="a training run folder or an exported model")
    p.add_argument("--eval", type=Path, required=True, help="an `attnprobe toy evaluate` folder")
    p.add_argument("--out", type=Path, default=Path("docs"))
    p.add_argument("--facts", type=Path, help="settings and final values when no log exists")
    args = p.parse_args(argv)
    if args.run is None and args.facts is None:
        p.error("give --run (a folder with the training log) or --facts")
    print(write_card(args.run, args.eval, args.out, args.facts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
