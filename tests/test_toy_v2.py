"""The shipped toy of world v2 (``toy-v2``): a built-in model with its own world and words."""

from __future__ import annotations

import pytest

from probe.models import load_pipeline
from probe.models.vocabulary import UnknownWordError, check_known_words, known_words
from probe.toy.world.world import get_world, world_of


@pytest.fixture(scope="module")
def toy_v2():
    return load_pipeline("toy-v2")


def test_toy_v2_loads_by_name_with_its_world_and_words(toy_v2) -> None:
    assert world_of(toy_v2).name == "v2"
    words = known_words(toy_v2)
    assert words is not None and set(get_world("v2").colours) <= words  # white, grey, ...
    check_known_words(toy_v2, ["a white car", "a grey dog standing in the park"])
    with pytest.raises(UnknownWordError, match="parked"):
        check_known_words(toy_v2, ["a white car parked"])
    v1 = known_words(load_pipeline("toy"))
    assert v1 is not None and "white" not in v1  # the default toy still refuses it


@pytest.mark.slow
def test_toy_v2_draws_the_colours_the_v1_toy_never_learned(toy_v2) -> None:
    """One held-out seed of every colour_car prompt: the new colours are drawn and read back."""
    from probe.toy.evaluation.evaluate import evaluate

    report = evaluate(toy_v2, ["colour_car"], seeds=[1007])
    assert len(report.rows) == len(get_world("v2").colours)
    by_colour = {r.prompt.split()[1]: r for r in report.rows}
    assert {"white", "grey"} <= set(by_colour)
    summary = report.summary()[-1]
    assert summary["found"] == 1.0 and summary["category"] >= 0.9
    assert summary["colour"] >= 14 / 16  # the card's evaluation: see docs/toy_v2


def test_reproduce_and_sweep_by_name_take_the_v2_lists(tmp_path) -> None:
    """``--model toy-v2`` (a name, not a folder) still probes and edits on v2's sixteen colours."""
    from dataclasses import replace

    from editing.experiment.reproduction import Reproduction
    from editing.experiment.settings import ReproduceConfig
    from probe.prompts.templates import load_template

    config = replace(ReproduceConfig.preset("toy-v2", quick=True), model="toy-v2")
    run = Reproduction(tmp_path / "run", config, progress=False, workers=1)
    assert run.lists() == "v2"
    colours = load_template("colour_car", world=run.lists())
    assert len(colours) == 16 and {"white", "grey"} <= set(colours.classes("colour"))
