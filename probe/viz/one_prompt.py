"""``attnprobe demo``: one prompt, every layer at every step, word heat maps.

(``make demo`` is the whole experiment, ``attnprobe reproduce``; this is the one-prompt look.)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from probe.families import family_of
from probe.models import generation_defaults, load_pipeline
from probe.recording.recorder import record_attention
from probe.viz import word_heatmaps

DEMO_PROMPT = "a red car"
DEMO_WORDS = ("red", "car")


def run_demo(model: str, out: Path, steps: int | None = None, seed: int = 0) -> dict[str, Path]:
    """Generate ``DEMO_PROMPT``, record all layers × steps × kinds, save image, maps and figure.

    Steps (default), guidance and size are the model's own (``generation_defaults``).

    Returns:
        The files written, by role.
    """
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=False, desc=f"generating on {model}")
    defaults = generation_defaults(pipe)
    with record_attention(pipe, layers="all", kinds=("cross", "self")) as maps:
        image = pipe(
            DEMO_PROMPT,
            num_inference_steps=steps or defaults["num_inference_steps"],
            height=defaults["height"],
            width=defaults["width"],
            generator=torch.Generator().manual_seed(seed),
            **family_of(pipe).pipe_kwargs(pipe, [DEMO_PROMPT], defaults["guidance_scale"]),
        ).images[0]
    files = {
        "image": out / "image.png",
        "maps": out / "maps.safetensors",
        "heatmaps": out / "word_heatmaps.png",
        "summary": out / "summary.json",
    }
    image.save(files["image"])
    maps.save(files["maps"])
    word_heatmaps(maps, image, DEMO_WORDS).savefig(files["heatmaps"], dpi=120)
    summary = {
        "model": model,
        "prompt": DEMO_PROMPT,
        "layers": maps.recorded_layers(),
        "steps": len(maps.steps),
        "kinds": maps.kinds,
        "self_reduce": maps.settings.get("self_reduce"),
        "megabytes": round(maps.nbytes / 2**20, 2),
    }
    files["summary"].write_text(json.dumps(summary, indent=2))
    print(f"recorded {maps}")
    for role, path in files.items():
        print(f"{role:>9}: {path}")
    return files
