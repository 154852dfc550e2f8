"""Free-Prompt-Editing carried to joint attention (SD3): attnprobe's extension; no published
FPE exists for DiTs.

    edit(sd3_pipe, "a red car", ["a blue car"], method="fpe")   # JointSelfAttentionReplace

In a UNet, FPE gives each target row the source's self-attention probabilities, and leaves
cross-attention alone. A DiT block has one softmax over [image; text] keys, so an image query's
row is ``[P_ii | P_it]`` (image keys, then text keys) and sums to 1 across both. The DiT FPE
here gives each conditional target image row

- the source's image→image block exactly: ``P'_ii = P^src_ii`` (mass ``m_src`` = the row's sum
  over image keys), and
- the target's own text columns, rescaled to the rest of the row:
  ``P'_it = (1 - m_src) · P^tgt_it / (1 - m_tgt)``, i.e. the target's distribution over its
  text tokens, ``softmax(q_tgt k_txtᵀ)``, with mass ``1 - m_src``;

text rows (text→image, text→text) and unconditional rows stay the target's own. Rows still sum
to 1; when source and target coincide nothing changes. ``text_mass="target"`` is the other
reading: the target keeps its own image/text split ``m_tgt`` and only the distribution over
image keys becomes the source's (``P'_ii = m_tgt · P^src_ii / m_src``, ``P'_it = P^tgt_it``).

Both run on the fused kernel, without any N×N map: with ``Σ_img`` the image keys,

    image part = Σ_img P^src_ii v_tgt   = SDPA(q_src, k_src, [v_tgt on image keys; 0 on text])
    m_src      = Σ_img P^src_ii          = the same call's extra value channel (1 on image keys)
    text part  = softmax(q_tgt k_txtᵀ) v_txt = SDPA(q_tgt, k_tgt_txt, v_tgt_txt)

and the row's output is ``image part + (1 - m_src) · text part``.
:class:`MaterialisedJointSelfAttentionReplace` builds the edited probabilities themselves; it
is the reference the fused version is tested against.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from editing.methods.replace import RowEditor, SelfAttentionReplace, write_rows
from probe.attention.controller import AttentionCall, Controller, attention_probs
from probe.attention.joint import JointEditor
from probe.attention.layer_info import LayerSpec
from probe.attention.steps import StepSpec

TEXT_MASSES = ("source", "target")


class JointSelfAttentionReplace(RowEditor, JointEditor):
    """DiT FPE on the fused kernel (see the module).

    Args:
        layers, steps, guidance: as :class:`~editing.methods.replace.RowEditor` (default every
            block, the first 80% of steps, conditional rows).
        text_mass: ``"source"`` (default: the image→image block is exactly the source's) or
            ``"target"`` (the target keeps its image/text split).

    Example:
        >>> edit(sd3, "a red car", ["a blue car"], controllers=[JointSelfAttentionReplace()])
    """

    def __init__(
        self,
        layers: LayerSpec = "fpe",
        steps: StepSpec | float = 0.8,
        guidance: str = "cond",
        text_mass: str = "source",
    ) -> None:
        super().__init__(layers, steps, guidance)
        if text_mass not in TEXT_MASSES:
            raise ValueError(f"text_mass={text_mass!r}: use 'source' or 'target'")
        self.text_mass = text_mass

    def edit_joint(
        self, call: AttentionCall, q: Tensor, k: Tensor, v: Tensor, n_image: int, out: Tensor
    ) -> Tensor:
        src, tgt = self.pairs(call)
        if not tgt:
            return out
        n, scale = n_image, q.shape[-1] ** -0.5
        image_part, m_src = _image_part(q[src, :, :n], k[src], v[tgt, :, :n], scale)
        text = F.scaled_dot_product_attention(
            q[tgt, :, :n], k[tgt, :, n:], v[tgt, :, n:], scale=scale
        )
        if self.text_mass == "source":
            rows = image_part + (1 - m_src) * text
        else:  # the target's split: m_tgt from its own joint softmax
            _, m_tgt = _image_part(q[tgt, :, :n], k[tgt], v[tgt, :, :n], scale)
            rows = image_part * (m_tgt / m_src) + (1 - m_tgt) * text
        return write_rows(out, tgt, rows, queries=n)


class MaterialisedJointSelfAttentionReplace(JointSelfAttentionReplace):
    """The same edit by building the edited joint probabilities ``[batch, heads, N+T, N+T]``
    (the reference of the fused one; needs the N×N memory)."""

    def edit_joint(
        self, call: AttentionCall, q: Tensor, k: Tensor, v: Tensor, n_image: int, out: Tensor
    ) -> Tensor:
        src, tgt = self.pairs(call)
        if not tgt:
            return out
        n = n_image
        probs = attention_probs(q, k, q.shape[-1] ** -0.5)
        ps, pt = probs[src, :, :n], probs[tgt, :, :n]
        m_src = ps[..., :n].sum(-1, keepdim=True)
        m_tgt = pt[..., :n].sum(-1, keepdim=True)
        if self.text_mass == "source":
            rows = torch.cat([ps[..., :n], pt[..., n:] * (1 - m_src) / (1 - m_tgt)], dim=-1)
        else:
            rows = torch.cat([ps[..., :n] * m_tgt / m_src, pt[..., n:]], dim=-1)
        probs = probs.clone()
        probs[tgt, :, :n] = rows
        return (probs @ v.float()).to(out.dtype)


def _image_part(q: Tensor, k: Tensor, v_image: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """``(Σ_img P v_image, Σ_img P)`` for the joint softmax of ``q`` over ``k`` (image keys
    first, then text keys): one fused call, text keys given zero values and an extra value
    channel that is 1 on image keys and 0 on text keys."""
    rows, heads, n, d = v_image.shape
    text = k.shape[2] - n
    values = torch.cat([v_image, v_image.new_zeros(rows, heads, text, d)], dim=2)
    indicator = torch.cat(
        [v_image.new_ones(rows, heads, n, 1), v_image.new_zeros(rows, heads, text, 1)], dim=2
    )
    out = F.scaled_dot_product_attention(q, k, torch.cat([values, indicator], -1), scale=scale)
    return out[..., :d], out[..., d:]


def for_joint_attention(controllers: Sequence[Controller], method: str) -> list[Controller]:
    """The controllers of an edit on a DiT: FPE's :class:`SelfAttentionReplace` becomes
    :class:`JointSelfAttentionReplace` (same layers, steps, guidance half), MasaCtrl's
    :class:`~editing.methods.masactrl.MutualSelfAttention` becomes
    :class:`~editing.methods.kv_injection.JointMutualAttention` (same start step and layer);
    joint editors pass.

    Prompt-to-Prompt is refused: its edits are maps of image queries over the text's words,
    and in a joint softmax those columns share one normalisation with the image keys (replacing
    them moves the image→image mass, a choice P2P never made) while the text tokens they
    read are themselves rewritten by the image in every double-stream block, so a word's
    column no longer carries that word's fixed value as CLIP's does in a UNet; no published
    DiT Prompt-to-Prompt exists to pin a reading to.

    Raises:
        NotImplementedError: a method not carried to joint attention (``cross``, ``p2p``,
            a masked ``masactrl``, custom UNet controllers), with the reason.
    """
    from editing.methods.kv_injection import joint_mutual_attention
    from editing.methods.masactrl import MutualSelfAttention

    out: list[Controller] = []
    for c in controllers:
        if isinstance(c, JointEditor):
            out.append(c)
        elif type(c) is SelfAttentionReplace:
            joint = JointSelfAttentionReplace(c.layer_spec, c.step_spec, c.guidance)
            joint.targets = c.targets  # a sweep's editor edits its own targets only
            out.append(joint)
        elif type(c) is MutualSelfAttention:
            out.append(joint_mutual_attention(c))
        else:
            raise NotImplementedError(not_carried(type(c).__name__, method))
    return out


def not_carried(name: str, method: str) -> str:
    """Why a UNet controller is refused on joint attention, and the way out."""
    why = (
        "Prompt-to-Prompt's maps are image queries over the words, but in a joint softmax those "
        "columns share one normalisation with the image keys and the text tokens are rewritten "
        "by the image in every double-stream block, so its word swap has no defined meaning "
        "there (docs/editing.md)"
        if method == "p2p"
        else "it edits a UNet's separate self- or cross-attention"
    )
    return (
        f"{name} (method {method!r}) is not carried to joint attention (SD3, Flux): {why}; use "
        "method='fpe', 'stable-flow', 'masactrl' or 'none'"
    )
