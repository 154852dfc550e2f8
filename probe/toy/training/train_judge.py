"""Train the category judge: a small CNN over object silhouettes found in degraded renders.

Each training example is a random toy scene, rendered, then degraded the way a generator degrades
images (:func:`degrade`: blur, colour shift, gaussian noise); its mask is found with
:func:`probe.toy.judges.masks.find_object` (the same path the judge takes at test time), randomly
eroded or dilated by one pixel, cropped to a 32×32 silhouette and labelled with the scene's
category. Scenes are drawn from ``numpy.random.default_rng(seed)`` (seed 0 by default); held-out
tests use other seeds. Runs in about two minutes on one CPU thread. Each toy world has its judge
(``--world``; ``category.json`` records it); with ``--work DIR`` the run is resumable (the examples
and a checkpoint after every epoch are kept there, e.g. ``--work runs/j2``).

Usage::

    python -m probe.toy.training.train_judge --out probe/toy/judges/weights_v1     # world v1
    python -m probe.toy.training.train_judge --world v2 --out probe/toy/judges/weights_v2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from probe.toy.judges.judge import CROP_SIZE, CategoryNet, find_object, silhouette_crop
from probe.toy.world.world import World, get_world, random_scene, render_scene

WIDTH = 16


def degrade(
    image: np.ndarray,
    rng: np.random.Generator,
    noise: float = 8.0,
    blur: float = 1.0,
    shift: float = 15.0,
) -> np.ndarray:
    """A render made imperfect the way a generated image is.

    Args:
        image: uint8 ``[H, W, 3]``.
        rng: random source for the colour shift and the noise.
        noise: standard deviation of per-pixel gaussian noise (0-255 scale).
        blur: sigma in pixels of a gaussian blur.
        shift: each channel is offset by a uniform value in ``[-shift, shift]``.

    Returns:
        The degraded image, uint8 ``[H, W, 3]``.

    Example:
        >>> noisy = degrade(render_scene(Scene()).image, np.random.default_rng(0))
    """
    img = ndimage.gaussian_filter(image.astype(np.float32), (blur, blur, 0)) if blur else image
    img = img + rng.uniform(-shift, shift, 3).astype(np.float32)
    img = img + rng.normal(0, noise, image.shape).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _jitter_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    r = rng.random()
    if r < 0.2:
        eroded = ndimage.binary_erosion(mask)
        return eroded if eroded.sum() > 0.5 * mask.sum() else mask
    if r < 0.4:
        return ndimage.binary_dilation(mask)
    return mask


def make_examples(
    n: int,
    seed: int,
    world: World | str | None = None,
    sizes: Sequence[int] = (48, 64, 64, 64),
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` silhouettes ``[n, 32, 32]`` (float32) and their category indices ``[n]``.

    One in five examples uses the true mask of a clean render instead of a found one, so the
    judge also works when given exact masks. Scenes are of ``world`` (default: the shipped
    toy's), rendered at a size drawn from ``sizes``.
    """
    w = get_world(world)
    rng = np.random.default_rng(seed)
    xs = np.empty((n, CROP_SIZE, CROP_SIZE), np.float32)
    ys = np.empty(n, np.int64)
    i = 0
    while i < n:
        _, scene = random_scene(rng, w)
        render = render_scene(scene, size=int(rng.choice(list(sizes))))
        if rng.random() < 0.2:
            mask = render.mask
        else:
            image = degrade(
                render.image, rng, rng.uniform(0, 14), rng.uniform(0, 1.6), rng.uniform(0, 25)
            )
            mask = find_object(image, w)
        if not mask.any():
            continue
        xs[i] = silhouette_crop(_jitter_mask(mask, rng))
        ys[i] = w.categories.index(scene.category)
        i += 1
    return xs, ys


def _examples(
    n: int, seed: int, world: World, sizes: Sequence[int], work: Path | None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`make_examples`, kept in ``work`` (``examples_<seed>_<n>.npz``) when given."""
    path = None if work is None else work / f"examples_{seed}_{n}.npz"
    if path is not None and path.is_file():
        data = np.load(path)
        return data["x"], data["y"]
    x, y = make_examples(n, seed, world, sizes)
    if path is not None:
        work.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        np.savez(path.with_suffix(".tmp.npz"), x=x, y=y)
        os.replace(path.with_suffix(".tmp.npz"), path)
    return x, y


def train(
    n_train: int = 24000,
    n_val: int = 2000,
    epochs: int = 12,
    seed: int = 0,
    world: World | str | None = None,
    work: Path | None = None,
    sizes: Sequence[int] = (48, 64, 64, 64),
) -> tuple[CategoryNet, dict[str, float]]:
    """Train the category classifier from scratch; deterministic for ``seed``.

    Args:
        n_train, n_val: training and validation examples.
        epochs: passes over the training examples (batches of 128, one-cycle learning rate).
        seed: seeds the examples (``seed``, ``seed + 1`` for validation) and the network.
        world: the toy world of the scenes (default: the shipped toy's).
        work: if given, the examples and a checkpoint after each epoch are kept there, and a
            rerun resumes from them.
        sizes: image sizes the scenes are rendered at.

    Returns:
        The trained network (in eval mode) and metrics (``val_accuracy``, ``seconds``).
    """
    start = time.time()
    w = get_world(world)
    torch.manual_seed(seed)
    x_train, y_train = _examples(n_train, seed, w, sizes, work)
    x_val, y_val = _examples(n_val, seed + 1, w, sizes, work)
    print(f"{n_train} + {n_val} examples of world {w.name} ready after {time.time() - start:.0f}s")
    net = CategoryNet(len(w.categories), WIDTH)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * (n_train // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    state = _resume(work, net, opt, sched, gen)
    data = (torch.from_numpy(x_train)[:, None], torch.from_numpy(y_train))
    for epoch in range(int(state.get("epoch", 0)), epochs):
        loss = _epoch(net, opt, sched, gen, data)
        acc = accuracy(net, x_val, y_val)
        print(f"epoch {epoch + 1}/{epochs}: loss {loss:.3f}, val accuracy {acc:.4f}")
        if work is not None:
            checkpoint = {"net": net.state_dict(), "opt": opt.state_dict(), "epoch": epoch + 1}
            checkpoint |= {"sched": sched.state_dict(), "gen": gen.get_state()}
            torch.save(checkpoint, work / "judge.pt.tmp")
            os.replace(work / "judge.pt.tmp", work / "judge.pt")
    metrics = {"val_accuracy": accuracy(net, x_val, y_val), "seconds": time.time() - start}
    return net.eval(), metrics


def _resume(
    work: Path | None, net: CategoryNet, opt: Any, sched: Any, gen: torch.Generator
) -> dict[str, Any]:
    """Load ``work/judge.pt`` into the training objects if it exists; returns its state."""
    path = None if work is None else work / "judge.pt"
    if path is None or not path.is_file():
        return {}
    state: dict[str, Any] = torch.load(path, weights_only=False)
    net.load_state_dict(state["net"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    gen.set_state(state["gen"])
    return state


def _epoch(
    net: CategoryNet,
    opt: torch.optim.Optimizer,
    sched: Any,
    gen: torch.Generator,
    data: tuple[torch.Tensor, torch.Tensor],
) -> float:
    """One pass over the examples ``([n, 1, 32, 32], [n])``, mirrored at random; last loss."""
    xt, yt = data
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    net.train()
    order = torch.randperm(len(xt), generator=gen)
    loss = torch.zeros(())
    for b in range(len(xt) // 128):
        idx = order[b * 128 : (b + 1) * 128]
        xb = xt[idx]
        flip = torch.rand(len(idx), generator=gen) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        loss = loss_fn(net(xb), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return float(loss.item())


def accuracy(net: CategoryNet, x: np.ndarray, y: np.ndarray) -> float:
    """Share of silhouettes ``[n, 32, 32]`` classified as their label ``[n]``."""
    net.eval()
    with torch.no_grad():
        pred = net(torch.from_numpy(x)[:, None]).argmax(-1).numpy()
    return float((pred == y).mean())


def save(
    net: CategoryNet,
    out: Path,
    metrics: dict[str, float],
    seed: int,
    world: World | str | None = None,
) -> None:
    """Write ``category.safetensors`` and ``category.json`` (world, classes, width, seed,
    metrics)."""
    w = get_world(world)
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()}, out / "category.safetensors"
    )
    config = {
        "world": w.name,
        "classes": list(w.categories),
        "width": WIDTH,
        "crop_size": CROP_SIZE,
        "seed": seed,
        "trained_by": "python -m probe.toy.training.train_judge",
        **{k: round(v, 4) for k, v in metrics.items()},
    }
    (out / "category.json").write_text(json.dumps(config, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Command line: train the category judge and write its weights to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="probe/toy/judges/weights_v1", help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=24000)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--world", default=None, help="toy world (v1, v2; default: the shipped)")
    parser.add_argument("--work", type=Path, help="folder to resume from (examples, checkpoint)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    net, metrics = train(
        args.n_train, epochs=args.epochs, seed=args.seed, world=args.world, work=args.work
    )
    save(net, Path(args.out), metrics, args.seed, args.world)
    print(f"val accuracy {metrics['val_accuracy']:.4f}; weights in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
