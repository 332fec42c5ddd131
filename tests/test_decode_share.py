"""Shared decoding's pieces without processes: merging the shares' texts, the model digest."""

from __future__ import annotations

import copy

import pytest
import torch

from runtime.decode_share import DecodeShare, state_digest


class _Given(DecodeShare):
    """Share 0 of three; the other shares' lists are given."""

    def __init__(self, others: list) -> None:
        super().__init__(0, 3)
        self.others = others

    def exchange(self, mine):
        return [mine, *self.others]


def test_the_shares_merge_back_in_mr_order_with_their_token_counts():
    share = _Given([([None, "b", None, None, "e"], 7), ([None, None, "c", None, None], 2)])
    assert share.gather(["a", None, None, "d", None], 5) == (["a", "b", "c", "d", "e"], 14)


def test_an_mr_no_share_decoded_is_an_error():
    with pytest.raises(RuntimeError, match="without a hypothesis"):
        _Given([([None, None], 0), ([None, None], 0)]).gather(["a", None], 1)


def test_other_shares_get_nothing_to_score():
    class Other(DecodeShare):
        def exchange(self, mine):
            return None

    assert Other(1, 2).gather([None, "x"], 3) is None and not Other(1, 2).scores


def test_the_digest_tells_models_apart_bit_for_bit():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    model.register_buffer("step", torch.tensor(3.0))  # a 0-d tensor
    model.half_copy = torch.nn.Linear(2, 2).to(torch.bfloat16)
    twin = copy.deepcopy(model)
    assert state_digest(model) == state_digest(twin)
    with torch.no_grad():
        twin[0].weight[1, 2] = torch.nextafter(twin[0].weight[1, 2], torch.tensor(9.0))  # one ulp
    assert state_digest(model) != state_digest(twin)
