"""Cut a GPT-2 in two: a client part and a server part (split learning).

torchtitan-style: each part is a deep copy of the whole model with what it does not
own deleted. Blocks are keyed "0".."n-1" in a ModuleDict, so each part keeps the
original block names and parameter names (a part's state dict is a subset of the
whole model's), and ``GPT2.forward`` passes through whatever a part owns.

The runtime does not cut whole models any more: each rank builds its part alone
(``models/parts.py``), with the same result bit for bit; ``split_model`` remains the
reference those builds are tested against, and a tool for a model already in memory.
"""

from __future__ import annotations

import copy

from .gpt2 import GPT2

__all__ = ["split_model"]


def split_model(model: GPT2, cut: int) -> tuple[GPT2, GPT2]:
    """Return ``(client, server)`` copies of ``model`` cut after block ``cut - 1``.

    Cut semantics, for ``cut`` in [0, n_layer]:
      - client: token + position embeddings (``wte``, ``wpe``, ``drop``) and blocks
        "0".."cut-1". Input token ids (B, T); output hidden states (B, T, C).
      - server: blocks "cut".."n_layer-1", ``ln_f`` and ``lm_head``. Input hidden states
        (B, T, C); output logits (B, T, V).
      - cut 0: the client holds only the embeddings; cut n_layer: the server holds only
        ``ln_f`` and ``lm_head``.

    The LM head is tied to ``wte``, which lives on the client; the server's ``lm_head``
    therefore gets its own frozen copy of the token embedding (``requires_grad=False``,
    separate storage). LoRA adapters, if applied, travel with their blocks, and every
    parameter keeps its ``requires_grad``. ``model`` itself is not changed. Memory:
    each part is made from a full deep copy, so splitting briefly needs 3x the model.
    """
    n_layer = model.config.n_layer
    if isinstance(cut, bool) or not isinstance(cut, int) or not 0 <= cut <= n_layer:
        raise ValueError(f"cut must be an int in [0, n_layer] = [0, {n_layer}], got {cut!r}")
    tr = model.transformer
    whole = all(k in tr for k in ("wte", "wpe", "ln_f")) and model.lm_head is not None
    if not whole or len(tr["h"]) != n_layer:
        raise ValueError("split_model needs a whole GPT2 (all blocks, embeddings, ln_f and lm_head)")

    client = copy.deepcopy(model)
    for name in list(client.transformer["h"].keys()):
        if int(name) >= cut:
            del client.transformer["h"][name]
    del client.transformer["ln_f"]
    client.lm_head = None

    server = copy.deepcopy(model)
    for name in list(server.transformer["h"].keys()):
        if int(name) < cut:
            del server.transformer["h"][name]
    for name in ("wte", "wpe", "drop"):
        del server.transformer[name]
    # After the deep copy, the server's lm_head weight is its own copy of wte (the copy
    # of wte itself was just deleted); the embedding is trained on the client only.
    server.lm_head.weight.requires_grad_(False)
    return client, server
