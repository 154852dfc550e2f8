"""token_shares: the cross-attention weight per kind of text position."""

from __future__ import annotations

import pytest
import torch

from probe.recording.recorder import record_attention
from probe.recording.token_shares import token_shares


def test_shares_split_the_weight_of_every_query(tiny_pipe):
    with record_attention(tiny_pipe, kinds=("cross",)) as maps:
        tiny_pipe("a red car", num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    shares = token_shares(maps)
    n = len(maps.tokens[0])
    assert shares.tokens[0] == "<|startoftext|>" and len(shares.per_token) == n
    assert shares.start + shares.words + shares.end + shares.padding == pytest.approx(1, abs=1e-3)
    layer, step = maps.recorded_layers("cross")[0], maps.steps[-1]
    one = token_shares(maps, layers=[layer], steps=[step])
    weights = maps.cross(layer, step).reshape(-1, 77).mean(0)  # by hand, one layer and step
    assert one.padding == pytest.approx(float(weights[n:].sum()), abs=1e-5)
    assert one.words == pytest.approx(float(weights[1 : n - 1].sum()), abs=1e-5)
    assert one.row().count("%") == 4
    with pytest.raises(KeyError, match="no cross-attention"):
        with record_attention(tiny_pipe, kinds=("self",)) as only_self:
            tiny_pipe("a red car", num_inference_steps=1)
        token_shares(only_self)
