"""What the explorer reads of a recording: the part of :class:`AttentionMaps` it uses.

A protocol rather than the class itself, so that ``AttentionMaps.explore`` can build the page
without an import cycle (``probe.recording.maps`` → ``probe.viz.explorer`` → back).
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor


class RecordedMaps(Protocol):
    """An :class:`probe.recording.maps.AttentionMaps` (see there for each member)."""

    layers: list[Any]
    latent_hw: tuple[int, int]
    tokens: list[list[str]]
    timesteps: dict[int, float]
    settings: dict[str, Any]
    data: dict[str, Tensor]

    @property
    def steps(self) -> list[int]: ...

    @property
    def kinds(self) -> list[str]: ...

    def recorded_layers(self, kind: str | None = None) -> list[int]: ...

    def resolution(self, layer: int) -> tuple[int, int]: ...

    def svd(self, layer: int, step: int, kind: str = "self") -> tuple[Tensor, Tensor, Tensor]: ...

    def __getitem__(self, key: tuple[int, int, str]) -> Tensor: ...
