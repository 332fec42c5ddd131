"""Build only the part of GPT-2 that a party holds.

A part is named by the top-level pieces it holds: ``transformer.wte``, ``transformer.wpe``,
``transformer.h.<i>``, ``transformer.ln_f`` and ``lm_head``. ``GPT2(config, keep=...)``
constructs the pieces one at a time in the whole model's order; a piece the part does not
hold still draws its initialisation's random numbers (into a throw-away tensor) and is
then left on the ``meta`` device, and ``apply_lora`` does the same for the adapters of
blocks on ``meta``. So a part built alone has, bit for bit, the weights (and LoRA init)
that the same part has when cut from the whole model built from the same seed, with no
transfer between ranks; at most one piece that is not held is ever real at a time (the
largest: the (V, d) embedding). ``finish_part`` then deletes what the part does not hold.

From a checkpoint (``GPT2.from_pretrained(..., keep=...)``) only the held tensors are
read from a ``model.safetensors`` (tensor by tensor); a ``pytorch_model.bin`` is read
whole and then filtered.

The one exception to "only what it holds": the vanilla server's head is tied to the
token embedding, which is the client's; the server builds ``wte`` and keeps it as a
frozen, untied copy under ``lm_head.weight`` (as ``split_model`` does).
"""

from __future__ import annotations

from torch import nn

from .encoder import EncoderClassifier
from .gpt2 import GPT2
from .pieces import block_of, piece_of

__all__ = ["ENDS", "ROLES", "block_of", "finish_part", "build_keep", "piece_of"]

ROLES = ("whole", "client", "server")


# Per architecture: the input end's pieces and the output end's pieces (GPT-2: final norm + LM
# head; the encoder classifier of models/encoder.py: its classification head).
ENDS: dict[str, tuple[set[str], set[str]]] = {
    "gpt2": ({"transformer.wte", "transformer.wpe"}, {"transformer.ln_f", "lm_head"}),
    "encoder": ({"transformer.emb"}, {"head"}),
}


def build_keep(pieces: set[str]) -> set[str]:
    """The pieces to build for real: ``pieces``, plus ``wte`` for a head without its embedding."""
    return pieces | {"transformer.wte"} if "lm_head" in pieces else pieces


def finish_part(model: GPT2 | EncoderClassifier, pieces: set[str]) -> GPT2 | EncoderClassifier:
    """Delete from ``model`` (built with ``keep=build_keep(pieces)``) what the part does not hold."""
    tr = model.transformer
    if isinstance(model, GPT2):
        if "lm_head" in pieces and "transformer.wte" not in pieces:
            # The vanilla server: its head keeps the embedding's values, frozen and untied.
            model.lm_head.weight = nn.Parameter(tr["wte"].weight.detach(), requires_grad=False)
        if "transformer.wte" not in pieces:
            del tr["drop"]
    for name in [n for n in tr.keys() if n not in ("h", "drop")]:  # embeddings, final norm
        if f"transformer.{name}" not in pieces:
            del tr[name]
    for name in list(tr["h"].keys()):
        if f"transformer.h.{name}" not in pieces:
            del tr["h"][name]
    for head in ("lm_head", "head"):  # GPT-2's LM head, the encoder's classification head
        if getattr(model, head, None) is not None and head not in pieces:
            setattr(model, head, None)
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise RuntimeError(f"part still holds meta tensors (not built): {left[:5]}")
    return model
