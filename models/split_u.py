"""The U-shaped split: the client holds both ends of GPT-2, the server the middle.

Client part: the embeddings (``wte``, ``wpe``, ``drop``), blocks ``0..cut-1`` (the
front), blocks ``head_cut..n_layer-1`` (the back end), ``ln_f`` and ``lm_head`` tied
to the client's own ``wte``. Server part: blocks ``cut..head_cut-1`` only. One forward
crosses the cut twice: client front (token ids -> hidden states (B, T, C)), server
middle (hidden states -> hidden states), client back end (-> logits, loss). Only hidden
states and their gradients cross; token ids and labels stay on the client.

Parts are made like ``split_model``'s (deep copies of the whole model with what a part
does not own deleted), so parameter names are the whole model's and a part's state dict
is a subset of it. ``UFront`` and ``UBack`` wrap the client part for chains of parts
(decoding: ``[UFront(client), server, UBack(client, head_cut)]``, each with its cache).
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

from .gpt2 import GPT2

__all__ = ["UBack", "UFront", "split_model_u"]


def split_model_u(model: GPT2, cut: int, head_cut: int | None = None) -> tuple[GPT2, GPT2]:
    """Return ``(client, server)`` copies of ``model`` for the U-shaped split.

    ``cut`` in [0, n_layer): the client's front is blocks ``0..cut-1``; ``head_cut`` in
    [cut + 1, n_layer] (None = n_layer, the client's back end is only ``ln_f`` + ``lm_head``):
    the back end starts at that block. The server holds blocks ``cut..head_cut-1`` (at
    least one). ``model`` is not changed; LoRA adapters travel with their blocks.
    """
    n_layer = model.config.n_layer
    head_cut = n_layer if head_cut is None else head_cut
    for name, value in (("cut", cut), ("head_cut", head_cut)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if not 0 <= cut < head_cut <= n_layer:
        raise ValueError(f"the U split needs 0 <= cut < head_cut <= n_layer = {n_layer} (the server holds blocks "
                         f"cut..head_cut-1, at least one), got cut={cut}, head_cut={head_cut}")
    tr = model.transformer
    whole = all(k in tr for k in ("wte", "wpe", "ln_f")) and model.lm_head is not None
    if not whole or len(tr["h"]) != n_layer:
        raise ValueError("split_model_u needs a whole GPT2 (all blocks, embeddings, ln_f and lm_head)")

    client = copy.deepcopy(model)  # the tie lm_head.weight is wte.weight survives the copy
    for name in list(client.transformer["h"].keys()):
        if cut <= int(name) < head_cut:
            del client.transformer["h"][name]

    server = copy.deepcopy(model)
    for name in list(server.transformer["h"].keys()):
        if not cut <= int(name) < head_cut:
            del server.transformer["h"][name]
    for name in ("wte", "wpe", "drop", "ln_f"):
        del server.transformer[name]
    server.lm_head = None
    return client, server


class UFront(nn.Module):
    """The client part's front: token ids (B, T) -> hidden states (B, T, C) at ``cut``."""

    def __init__(self, client: GPT2, cut: int) -> None:
        super().__init__()
        self.client, self.cut = client, cut
        self.config = client.config

    def forward(self, x: Tensor, **kwargs: object) -> Tensor:
        return self.client(x, stop_block=self.cut, **kwargs)


class UBack(nn.Module):
    """The client part's back end: hidden states (B, T, C) from the server -> logits."""

    def __init__(self, client: GPT2, head_cut: int) -> None:
        super().__init__()
        self.client, self.head_cut = client, head_cut
        self.config = client.config

    @property
    def lm_head(self) -> nn.Module | None:  # decoding hooks the head of the last part
        return self.client.lm_head

    def forward(self, h: Tensor, **kwargs: object) -> Tensor:
        kwargs.pop("position_ids", None)  # positions were embedded by the front
        return self.client(h, from_hidden=True, first_block=self.head_cut, **kwargs)
