"""attnprobe: record, probe, visualise and edit the attention layers of Stable Diffusion.

    from probe import load_pipeline, record_attention

    pipe = load_pipeline("toy")
    with record_attention(pipe, layers="all", kinds=("cross", "self")) as maps:
        image = pipe("a red car", num_inference_steps=20).images[0]
    maps.word_map("car")                     # [h, w], cross-attention of "car"

The names below are the public face; each loads its module on first use, so ``import probe`` (and
``attnprobe --help``) stays fast. The parts: :mod:`probe.models` (loading), :mod:`probe.attention`
(layers, steps, batch roles, controllers, processor, hooks), :mod:`probe.recording`,
:mod:`probe.prompts`, :mod:`probe.probing`, :mod:`probe.viz`, :mod:`probe.toy`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_PUBLIC = {
    "TOY_DIR": "probe.models.loading",
    "load_pipeline": "probe.models.loading",
    "layer_table": "probe.models.tables",
    "run_layer_table": "probe.models.tables",
    "generation_defaults": "probe.models.defaults",
    "family_of": "probe.families",
    "check_known_words": "probe.models.vocabulary",
    "allow_unknown_words": "probe.models.vocabulary",
    "UnknownWordError": "probe.models.vocabulary",
    "LayerInfo": "probe.attention.layer_info",
    "unet_layers": "probe.families.unet",
    "resolve_layers": "probe.attention.layers",
    "format_layer_table": "probe.attention.layer_info",
    "resolve_steps": "probe.attention.steps",
    "fraction_steps": "probe.attention.steps",
    "BatchLayout": "probe.attention.batch",
    "AttentionCall": "probe.attention.controller",
    "Controller": "probe.attention.controller",
    "AttentionHooks": "probe.attention.hooks",
    "record_attention": "probe.recording.recorder",
    "BudgetError": "probe.recording.recorder",
    "AttentionMaps": "probe.recording.maps",
    "AttentionDataset": "probe.recording.store",
    "record_dataset": "probe.recording.dataset",
    "ShardGroup": "probe.shards",
    "load_template": "probe.prompts.templates",
    "load_edit_pairs": "probe.prompts.templates",
    "find_word": "probe.prompts.words",
    "FeatureOptions": "probe.probing.features",
    "build_features": "probe.probing.features",
    "ProbeConfig": "probe.probing.probes",
    "ProbeResults": "probe.probing.probes",
    "run_probes": "probe.probing.probes",
    "cross_validate": "probe.probing.probes",
    "random_init_like": "probe.recording.random_control",
    "LayerSelection": "probe.probing.selection",
    "select_layers": "probe.probing.selection",
}

__all__ = [
    "TOY_DIR",
    "AttentionCall",
    "AttentionDataset",
    "AttentionHooks",
    "AttentionMaps",
    "BatchLayout",
    "BudgetError",
    "Controller",
    "FeatureOptions",
    "LayerInfo",
    "LayerSelection",
    "ProbeConfig",
    "ProbeResults",
    "ShardGroup",
    "UnknownWordError",
    "allow_unknown_words",
    "build_features",
    "check_known_words",
    "cross_validate",
    "family_of",
    "find_word",
    "format_layer_table",
    "fraction_steps",
    "generation_defaults",
    "layer_table",
    "load_edit_pairs",
    "load_pipeline",
    "load_template",
    "random_init_like",
    "record_attention",
    "record_dataset",
    "resolve_layers",
    "resolve_steps",
    "run_layer_table",
    "run_probes",
    "select_layers",
    "unet_layers",
]

if TYPE_CHECKING:
    from probe.attention.batch import BatchLayout
    from probe.attention.controller import AttentionCall, Controller
    from probe.attention.hooks import AttentionHooks
    from probe.attention.layer_info import LayerInfo, format_layer_table
    from probe.attention.layers import resolve_layers
    from probe.attention.steps import fraction_steps, resolve_steps
    from probe.families import family_of
    from probe.families.unet import unet_layers
    from probe.models.defaults import generation_defaults
    from probe.models.loading import TOY_DIR, load_pipeline
    from probe.models.tables import layer_table, run_layer_table
    from probe.models.vocabulary import UnknownWordError, allow_unknown_words, check_known_words
    from probe.probing.features import FeatureOptions, build_features
    from probe.probing.probes import ProbeConfig, ProbeResults, cross_validate, run_probes
    from probe.probing.selection import LayerSelection, select_layers
    from probe.prompts.templates import load_edit_pairs, load_template
    from probe.prompts.words import find_word
    from probe.recording.dataset import record_dataset
    from probe.recording.maps import AttentionMaps
    from probe.recording.random_control import random_init_like
    from probe.recording.recorder import BudgetError, record_attention
    from probe.recording.store import AttentionDataset
    from probe.shards import ShardGroup


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'probe' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
