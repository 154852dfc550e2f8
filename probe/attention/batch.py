"""Which row of the UNet's batch is what: guidance half, sample, and editing branch.

Classifier-free guidance puts the unconditional rows first and the conditional rows second;
editing runs a source sample and one or more target samples side by side. Controllers read these
roles from a :class:`BatchLayout` and never guess them from tensor shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Guidance = Literal["uncond", "cond"]


@dataclass(frozen=True)
class Row:
    """One row of the UNet batch.

    Attributes:
        guidance: ``"uncond"`` (empty or negative prompt) or ``"cond"``.
        sample: which generated sample the row belongs to (0-based, prompt-major order).
        branch: ``"sample"`` for plain generation; ``"source"`` or ``"target"`` when editing.
    """

    guidance: Guidance
    sample: int
    branch: str = "sample"


@dataclass(frozen=True)
class BatchLayout:
    """The roles of the rows of a UNet batch, in batch order."""

    rows: tuple[Row, ...]

    @classmethod
    def for_samples(cls, n: int, guidance: bool) -> BatchLayout:
        """``n`` samples; with guidance, ``n`` unconditional rows come first (as in diffusers)."""
        cond = tuple(Row("cond", i) for i in range(n))
        if not guidance:
            return cls(cond)
        return cls(tuple(Row("uncond", i) for i in range(n)) + cond)

    @classmethod
    def unconditional(cls, n: int) -> BatchLayout:
        """``n`` unconditional rows alone: a pipeline's separate unconditional pass (FluxPipeline's
        true CFG)."""
        return cls(tuple(Row("uncond", i) for i in range(n)))

    @classmethod
    def for_edit(cls, n_targets: int, guidance: bool) -> BatchLayout:
        """Sample 0 is the source, samples 1..n_targets the targets; uncond rows first."""
        branches = ["source"] + ["target"] * n_targets
        cond = tuple(Row("cond", i, b) for i, b in enumerate(branches))
        if not guidance:
            return cls(cond)
        return cls(tuple(Row("uncond", i, b) for i, b in enumerate(branches)) + cond)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def num_samples(self) -> int:
        return len({row.sample for row in self.rows})

    @property
    def has_guidance(self) -> bool:
        return any(row.guidance == "uncond" for row in self.rows)

    def indices(
        self, guidance: Guidance | None = None, branch: str | None = None, sample: int | None = None
    ) -> list[int]:
        """Batch indices of the rows that match every given role."""
        return [
            i
            for i, row in enumerate(self.rows)
            if (guidance is None or row.guidance == guidance)
            and (branch is None or row.branch == branch)
            and (sample is None or row.sample == sample)
        ]

    def row_of(self, sample: int, guidance: Guidance) -> int:
        """The batch index of ``sample``'s row in the given guidance half."""
        found = self.indices(guidance=guidance, sample=sample)
        if not found:
            raise KeyError(f"no {guidance} row for sample {sample} in {self}")
        return found[0]
