"""Prompt templates: prompt sets with labels, and the word in each prompt that carries a label.

A template is a small YAML file in ``data_templates/``::

    name: colour_car
    description: "a {colour} car: the colour probe set"
    prompt: "a {colour} car"
    slots:
      colour: $colours          # a list from data_templates/lists.yaml, or an inline list
    edit: colour                # optional: makes it an editing set (every ordered pair)

Every combination of slot values is one prompt; each slot is a label whose value is also the word
that carries it in the prompt (``red`` in "a red car"), which is where a probe reads the
cross-attention map. Templates are validated on load, and every error names the file and line.
The same files serve the toy model and a real Stable Diffusion checkpoint.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FIELDS = ("name", "description", "prompt", "slots", "labels", "edit")
LISTS_FILE = "lists.yaml"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class TemplateError(ValueError):
    """A template file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class PromptItem:
    """One prompt with its labels and the word carrying each label."""

    prompt: str
    labels: dict[str, str]
    label_words: dict[str, str]


@dataclass(frozen=True)
class PromptSet:
    """The prompts of one template, in a fixed order."""

    name: str
    items: list[PromptItem]
    slots: dict[str, list[str]] = field(default_factory=dict)
    description: str = ""
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[PromptItem]:
        return iter(self.items)

    def __getitem__(self, i: int) -> PromptItem:
        return self.items[i]

    @property
    def label_names(self) -> list[str]:
        return list(self.slots)

    def classes(self, label: str) -> list[str]:
        """The values a label takes, in template order."""
        if label not in self.slots:
            raise KeyError(f"{self.name} has no label {label!r}; it has {self.label_names}")
        return list(self.slots[label])


@dataclass(frozen=True)
class EditPair:
    """A source prompt and a target that differs in one slot."""

    source: str
    target: str
    slot: str
    source_word: str
    target_word: str
    source_labels: dict[str, str]
    target_labels: dict[str, str]


@dataclass(frozen=True)
class EditSet:
    """The editing pairs of one template: every ordered pair of distinct values of its slot."""

    name: str
    pairs: list[EditPair]
    slot: str
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[EditPair]:
        return iter(self.pairs)


def template_dir() -> Path:
    """Where the built-in templates live (``$ATTNPROBE_TEMPLATES`` overrides)."""
    env = os.environ.get("ATTNPROBE_TEMPLATES")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for candidate in (here / "data_templates", here.parent / "data_templates"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"no data_templates folder next to {here}; set ATTNPROBE_TEMPLATES to one"
    )


def list_templates(kind: str | None = None) -> list[str]:
    """Names of the built-in templates; ``kind`` is ``"probe"`` or ``"edit"`` to filter."""
    names = []
    for path in sorted(template_dir().glob("*.yaml")):
        if path.name == LISTS_FILE or path.name.startswith("lists."):
            continue
        if kind is not None:
            is_edit = _read(path).get("edit") is not None
            if (kind == "edit") != is_edit:
                continue
        names.append(path.stem)
    return names


def _where(path: Path, node: yaml.Node) -> str:
    return f"{path}:{node.start_mark.line + 1}"


def _template_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise FileNotFoundError(f"template file {p} does not exist")
        return p
    path = template_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"no template named {name_or_path!r}; built-in templates: "
            f"{', '.join(list_templates())}; or pass the path of a .yaml file"
        )
    return path


def lists_file(world: str | None = None) -> Path:
    """The lists file of a word-list variant: ``lists.yaml`` (``world=None``: the lists of the
    shipped toy's world and of real checkpoints) or ``lists.<world>.yaml`` (another toy world,
    e.g. ``"v2"``: sixteen colours).

    Raises:
        FileNotFoundError: no lists file for ``world``; the message lists the variants.
    """
    if world is None:
        return template_dir() / LISTS_FILE
    path = template_dir() / f"lists.{world}.yaml"
    if not path.is_file():
        known = sorted(p.name[6:-5] for p in template_dir().glob("lists.*.yaml"))
        raise FileNotFoundError(
            f"no word lists for world {world!r} ({path} is missing); variants: "
            f"None (lists.yaml){''.join(', ' + repr(k) for k in known)}"
        )
    return path


def shared_lists(world: str | None = None) -> dict[str, list[str]]:
    """The word lists the templates share (``colours``, ``animals``): ``lists.yaml``, or with
    ``world`` the lists of that toy world (:func:`lists_file`)."""
    path = lists_file(world)
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    return {k: [str(v) for v in vs] for k, vs in data.items()}


def _read(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else {}


def _parse(path: Path) -> tuple[dict[str, Any], dict[str, yaml.Node]]:
    """The template's fields and, for each, its YAML node (for line numbers)."""
    try:
        root = yaml.compose(path.read_text())
    except yaml.YAMLError as e:
        raise TemplateError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(root, yaml.MappingNode):
        raise TemplateError(f"{path}:1: a template is a mapping with fields {', '.join(FIELDS)}")
    nodes: dict[str, yaml.Node] = {}
    for key, value in root.value:
        if key.value not in FIELDS:
            raise TemplateError(
                f"{_where(path, key)}: unknown field {key.value!r}; "
                f"a template has the fields {', '.join(FIELDS)}"
            )
        nodes[key.value] = value
    return yaml.safe_load(path.read_text()), nodes


def _slots(
    path: Path, data: dict[str, Any], nodes: dict[str, yaml.Node], world: str | None = None
) -> dict[str, list[str]]:
    node = nodes.get("slots")
    if node is None or not isinstance(data.get("slots"), dict) or not data["slots"]:
        where = _where(path, node) if node is not None else f"{path}:1"
        raise TemplateError(f"{where}: 'slots' must map each {{placeholder}} to a list of words")
    shared = shared_lists(world)
    slots: dict[str, list[str]] = {}
    for key, value_node in node.value:  # type: ignore[union-attr]
        name, values = key.value, data["slots"][key.value]
        if isinstance(values, str) and values.startswith("$"):
            if values[1:] not in shared:
                raise TemplateError(
                    f"{_where(path, value_node)}: slot {name!r} refers to {values}, which "
                    f"{LISTS_FILE} does not define (it has {', '.join(sorted(shared))})"
                )
            values = shared[values[1:]]
        if not isinstance(values, list) or not values:
            raise TemplateError(
                f"{_where(path, value_node)}: slot {name!r} needs a non-empty list of words"
            )
        values = [str(v).strip() for v in values]
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes or not all(values):
            raise TemplateError(
                f"{_where(path, value_node)}: slot {name!r} has duplicate or empty words {dupes}"
            )
        slots[name] = values
    return slots


def _validate(
    path: Path, world: str | None = None
) -> tuple[str, str, str, dict[str, list[str]], str | None]:
    data, nodes = _parse(path)
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        where = _where(path, nodes["prompt"]) if "prompt" in nodes else f"{path}:1"
        raise TemplateError(f"{where}: 'prompt' must be a sentence with {{slot}} placeholders")
    slots = _slots(path, data, nodes, world)
    used = _PLACEHOLDER.findall(prompt)
    for name in slots:
        if name not in used:
            raise TemplateError(
                f"{_where(path, nodes['prompt'])}: the label word of slot {name!r} is missing "
                f"from the prompt {prompt!r}; add {{{name}}} to it or remove the slot"
            )
    for name in used:
        if name not in slots:
            raise TemplateError(
                f"{_where(path, nodes['prompt'])}: placeholder {{{name}}} has no slot; "
                f"add it under 'slots' (slots: {', '.join(slots)})"
            )
    labels = data.get("labels")
    if labels is not None:
        bad = [x for x in labels if x not in slots] if isinstance(labels, list) else [labels]
        if bad:
            raise TemplateError(
                f"{_where(path, nodes['labels'])}: labels {bad} are not slots ({', '.join(slots)})"
            )
        slots = {k: slots[k] for k in labels} | {k: v for k, v in slots.items() if k not in labels}
    edit = data.get("edit")
    if edit is not None and edit not in slots:
        raise TemplateError(
            f"{_where(path, nodes['edit'])}: edit slot {edit!r} is not a slot ({', '.join(slots)})"
        )
    name = str(data.get("name") or path.stem)
    return name, str(data.get("description", "")), prompt, slots, edit


def load_template(name_or_path: str | Path, world: str | None = None) -> PromptSet:
    """Load a template by built-in name (``"colour_car"``) or path, validated.

    Args:
        name_or_path: a built-in name or a ``.yaml`` path.
        world: which word lists a ``$list`` slot takes (:func:`lists_file`): ``None``, the
            default lists; ``"v2"``, those of toy world v2 (sixteen colours).

    Raises:
        TemplateError: the file is malformed; the message names the file and line.
        FileNotFoundError: no such template.
    """
    path = _template_path(name_or_path)
    name, description, prompt, slots, _ = _validate(path, world)
    order = list(slots)
    items = []
    for combo in itertools.product(*(slots[s] for s in order)):
        values = dict(zip(order, combo, strict=True))
        items.append(
            PromptItem(prompt=prompt.format(**values), labels=values, label_words=dict(values))
        )
    return PromptSet(name, items, slots, description, path)


def load_edit_pairs(name_or_path: str | Path, world: str | None = None) -> EditSet:
    """Load an editing template: every ordered pair of distinct values of its ``edit`` slot.

    Other slots take every value, shared by source and target; ``world`` as
    :func:`load_template`.
    """
    path = _template_path(name_or_path)
    name, _, prompt, slots, edit = _validate(path, world)
    if edit is None:
        raise TemplateError(
            f"{path}:1: {name} is a probe template, not an editing set; add 'edit: <slot>' "
            f"or use one of {', '.join(list_templates('edit'))}"
        )
    others = [s for s in slots if s != edit]
    pairs = []
    for combo in itertools.product(*(slots[s] for s in others)):
        fixed = dict(zip(others, combo, strict=True))
        for a, b in itertools.permutations(slots[edit], 2):
            src, tgt = fixed | {edit: a}, fixed | {edit: b}
            pairs.append(EditPair(prompt.format(**src), prompt.format(**tgt), edit, a, b, src, tgt))
    return EditSet(name, pairs, edit, path)


def template_words(world: str | None = None) -> list[str]:
    """Every word of every built-in template (what the toy tokenizer must hold as one token),
    with the word lists of ``world`` (as :func:`load_template`)."""
    words: set[str] = set()
    for name in list_templates():
        for item in load_template(name, world):
            words.update(re.findall(r"[a-z]+", item.prompt.lower()))
    return sorted(words)
