"""Inference through the split: validation and decoding with each party holding only its part.

The client runs its part (embeddings and front blocks; in the U shape also the back end and
the head), the server its blocks, and only what training sends crosses the cut: hidden
states, in the cut's dtype (``CutCodec``). No gradient, no update.

- **Validation** (``SplitModel.loss`` / ``SplitModel.classifier``): the training forward of
  the split shape (``runtime/split/shapes/``) without autograd: a language model's masked
  NLL, a classifier's logits.
- **Decoding** (``SplitModel.decodable``): ``models.generate`` runs a chain of stages
  (``models/decode_chain.py``); the server's part is a ``RemoteStage`` whose KV cache lives
  on the server, in a session of its own (``ServerDecoding``). Per step only the new
  position's hidden states go up, with the surviving rows (the server reorders its cache as
  beam search reorders the client's) and the padding per row (the server rebuilds the padding
  mask from it). Vanilla shape: the server holds the head, so it returns what the search needs
  and nothing more: each row's k best log-probs and their tokens (k = 3 x beams for the
  recipe's beam search; 1 token greedy), after the client's repetition penalty and n-gram bans,
  which the client sends as (row, token) pairs (it holds the history). A row of log-probs
  would be V x 4 bytes (201 KB for GPT-2); the candidates are k x 8 bytes. U shape: the
  middle's hidden states come back, the client's back end and head finish the step, and no
  token id reaches the server.

The arithmetic is that of whole-model decoding (the same ``PartStage`` and ``Selection`` code
runs on each side), so with ``split.cut_dtype=fp32`` the tokens equal those of the whole
model with its adapters unmerged, bit for bit (tests/test_split_inference.py). Adapters stay
unmerged: merging would need a second copy of a part's weights.

The server serves one inference call at a time (a lock), so several clients' sessions
interleave step by step; with ``split.server_batching`` their concurrent steps run as one
forward instead (``runtime/split/decode_batching.py``). It serves them once training is over
(a client evaluates after its last aggregation, when the server has applied every update).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed.rpc as rpc
from torch import Tensor, nn

from models.decode_batch import JointStep
from models.decode_chain import PartStage, Stage, StepInput, padding_mask
from models.decode_ops import Penalties, Selection
from models.loss import model_loss
from runtime.io.telemetry import tensor_bytes
from runtime.split import server as split_server
from runtime.split.cut import CutCodec, decode, reply_like
from runtime.split.decode_batching import DecodeBatcher, StepRequest

# -- the server's half ---------------------------------------------------------------------


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode (no dropout) for the block; every submodule's flag restored after."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


class ServerDecoding:
    """The server's decoding sessions: one ``PartStage`` (with its own KV cache) per open
    (client, session) over the one server part."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.sessions: dict[tuple[int, int], tuple[PartStage, Selection]] = {}
        self.lock = threading.Lock()
        self.opened = 0
        batching = getattr(server, "batching", None)  # split.server_batching: steps of sessions run together
        self.batcher = None if batching is None else DecodeBatcher(self._run_steps, lambda: len(self.sessions),
                                                                 batching.window_s)

    @contextlib.contextmanager
    def serving(self) -> Iterator[nn.Module]:
        with self.lock, self.server.hold(), torch.inference_mode(), eval_mode(self.server.part):
            yield self.server.part

    def open(self, client: int, session: int, max_rows: int, capacity: int, k: int, penalty: float) -> None:
        stage = PartStage(self.server.part, first_block=self.server.cuts.get(client, 0))
        selection = Selection(k=k, repetition_penalty=penalty)
        stage.open(max_rows, capacity, True, selection)  # the cache's buffers are made on first use
        with self.lock:
            self.sessions[(client, session)] = (stage, selection)
            self.opened += 1

    def forward(self, client: int, session: int, h: Tensor, rows: Tensor | None, pad: Tensor | None,
                pen: Penalties | None) -> Any:
        """One forward of a session: its prompt, or one new position per row (batched with other
        sessions' steps under ``split.server_batching``)."""
        if self.batcher is not None and h.shape[1] == 1:
            return self.batcher.submit((client, session, h, rows, pad, pen))
        with self.serving():
            stage, selection = self.sessions[(client, session)]
            inp = self._input(stage, h, rows, pad)
            return self._reply(selection, stage(inp), h, pen)

    def _input(self, stage: PartStage, h: Tensor, rows: Tensor | None, pad: Tensor | None) -> StepInput:
        device = self.server.device
        x = decode(h, device)  # (R, T, C)
        length = stage.cache.length + x.shape[1]
        pad = None if pad is None else pad.to(device)
        mask = None if pad is None else padding_mask(pad, length)  # (R, L): the client's mask
        return StepInput(x, None, mask, pad, None if rows is None else rows.to(device))

    def _reply(self, selection: Selection, out: Tensor, h: Tensor, pen: Penalties | None) -> Any:
        """What goes back: hidden states (U shape's middle) in the cut's dtype, or the vanilla head's
        candidates: (log-probs (R, k), tokens (R, k) int32), or (tokens (R,), None) greedy."""
        if pen is None:
            return reply_like(out, h)
        score, tok = selection(out[:, -1].float(), Penalties(*(t.to(self.server.device) for t in pen)))
        return (tok.to(torch.int32).cpu(), None) if score is None else (score.cpu(), tok.to(torch.int32).cpu())

    def _run_steps(self, requests: list[StepRequest]) -> None:
        """One joint forward over the sessions' steps (``models/decode_batch.py``), one per first block."""
        with self.serving() as part:
            groups: dict[int, list[tuple[StepRequest, PartStage, Selection, StepInput]]] = {}
            for r in requests:
                client, session, h, rows, pad, _ = r.args
                try:
                    stage, selection = self.sessions[(client, session)]
                    inp = self._input(stage, h, rows, pad)
                    if inp.rows is not None:
                        stage.cache.reorder(inp.rows)
                except Exception as exc:  # this session's step only (e.g. closed meanwhile)
                    r.error = exc
                    continue
                groups.setdefault(int(stage.kwargs.get("first_block", 0)), []).append((r, stage, selection, inp))
            for first_block, group in groups.items():
                joint = JointStep([g[1].cache for g in group], [len(g[3].x) for g in group], [g[3].mask for g in group])
                out = part(torch.cat([g[3].x for g in group]), kv_cache=joint, first_block=first_block)
                joint.finish()
                for (r, _, selection, _inp), o in zip(group, out.split([len(g[3].x) for g in group])):
                    r.result = self._reply(selection, o, r.args[2], r.args[5])

    def stats(self) -> dict[str, Any]:
        """Sessions served; with batching, the decoding steps and the batches they ran in."""
        out: dict[str, Any] = {"sessions": self.opened}
        if self.batcher is not None:
            sizes = self.batcher.sizes
            out.update(steps=sum(sizes), batches=len(sizes), largest_batch=max(sizes, default=0))
        return out

    def close(self, client: int, session: int) -> None:
        with self.lock:
            self.sessions.pop((client, session), None)
        if self.batcher is not None:
            self.batcher.poke()

    def eval_loss(self, client: int, h: Tensor, targets: Tensor, loss_mask: Tensor) -> Tensor:
        with self.serving() as part:
            device = self.server.device
            return model_loss(part, decode(h, device), targets.to(device), loss_mask.to(device), 0.0,
                              first_block=self.server.cuts.get(client, 0)).cpu()

    def eval_output(self, client: int, h: Tensor, real: Tensor | None) -> Tensor:
        with self.serving() as part:
            device = self.server.device
            extra = {} if real is None else {"attn_mask": real.to(device) > 0}
            out = part(decode(h, device), first_block=self.server.cuts.get(client, 0), **extra)
            # Hidden states go back in the cut's dtype; a classifier head's logits (B, labels) in fp32.
            return reply_like(out, h) if out.dim() == 3 else out.float().cpu()


def _decoding() -> ServerDecoding:
    server = split_server.current()
    if server is None:
        raise RuntimeError("no SplitLoRA server is running on this worker")
    if server.decoding is None:
        server.decoding = ServerDecoding(server)
    return server.decoding


# Module-level RPC entry points (executed on the server).


def server_decode_open(client: int, session: int, max_rows: int, capacity: int, k: int, penalty: float) -> None:
    _decoding().open(client, session, max_rows, capacity, k, penalty)


def server_decode(client: int, session: int, h: Tensor, rows: Tensor | None, pad: Tensor | None,
                  pen: tuple[Tensor, ...] | None) -> Any:
    named = [(n, t) for n, t in zip(("h", "rows", "pad", *Penalties._fields), (h, rows, pad, *(pen or ())))
             if t is not None]
    split_server._record("server_decode", *(t for _, t in named), names=[n for n, _ in named])
    return _decoding().forward(client, session, h, rows, pad, None if pen is None else Penalties(*pen))


def server_decode_close(client: int, session: int) -> None:
    _decoding().close(client, session)


def server_eval_loss(client: int, h: Tensor, targets: Tensor, loss_mask: Tensor) -> Tensor:
    split_server._record("server_eval_loss", h, targets, loss_mask)
    return _decoding().eval_loss(client, h, targets, loss_mask)


def server_eval_output(client: int, h: Tensor, real: Tensor | None = None) -> Tensor:
    split_server._record("server_eval_output", h, *(() if real is None else (real,)))
    return _decoding().eval_output(client, h, real)


# -- the client's half ---------------------------------------------------------------------

_SESSIONS = itertools.count(1)


class RemoteStage(Stage):
    """The server's part as a stage of this client's decoding chain. ``meter`` counts the
    payload bytes each way and the round trips."""

    def __init__(self, server: str, rank: int, codec: CutCodec, selects: bool, meter: dict[str, int]) -> None:
        self.server, self.rank, self.codec, self.selects, self.meter = server, rank, codec, selects, meter
        self.session = 0

    def open(self, max_rows: int, capacity: int, last: bool, selection: Selection) -> None:
        self.session = next(_SESSIONS)
        k = selection.k if self.selects else 0
        rpc.rpc_sync(self.server, server_decode_open, args=(self.rank, self.session, max_rows, capacity, k,
                                                       selection.repetition_penalty))

    def __call__(self, inp: StepInput, pen: Penalties | None = None) -> Tensor | tuple[Tensor | None, Tensor]:
        device = inp.x.device
        h = self.codec.encode(inp.x)  # (R, T, C): the new positions only
        rows = None if inp.rows is None else inp.rows.cpu()
        pad = None if inp.mask is None else inp.pad.cpu()  # None: no row is padded (no mask)
        wire = None if pen is None else tuple(t.cpu() for t in pen.compact())
        sent = [t for t in (h, rows, pad, *(wire or ())) if t is not None]
        out = rpc.rpc_sync(self.server, server_decode, args=(self.rank, self.session, h, rows, pad, wire))
        self.meter["up"] += tensor_bytes(*sent)
        self.meter["calls"] += 1
        if not self.selects:
            self.meter["down"] += tensor_bytes(out)
            return decode(out, device)  # (R, T, C)
        first, second = out
        self.meter["down"] += tensor_bytes(*(t for t in out if t is not None))
        if second is None:  # greedy: the tokens (R,)
            return None, first.to(device).long()
        return first.to(device), second.to(device).long()  # (R, k) log-probs, tokens

    def close(self) -> None:
        if self.session:
            rpc.rpc_sync(self.server, server_decode_close, args=(self.rank, self.session))
            self.session = 0


class SplitModel:
    """A client's view of the trained model through the split: its own part here, the server's
    there. ``loss`` (a language model's validation), ``classifier`` (a classifier's logits) and
    ``decodable`` (decoding) run the split shape's inference path (``SplitShape.eval_forward``,
    ``SplitShape.decode_stages``); ``meter`` counts the decoding's bytes and round trips."""

    def __init__(self, shape: Any, part: nn.Module, server: str, rank: int, codec: CutCodec, cut: int,
                 head_cut: int) -> None:
        self.shape, self.part, self.server, self.rank, self.codec = shape, part, server, rank, codec
        self.cut, self.head_cut = cut, head_cut
        self.meter = {"up": 0, "down": 0, "calls": 0}

    @property
    def is_classifier(self) -> bool:
        return bool(getattr(self.part, "is_classifier", False))

    def _forward(self, batch: dict[str, Tensor]) -> Tensor:
        with torch.inference_mode(), eval_mode(self.part):
            return self.shape.eval_forward(self.part, self.server, self.rank, batch, self.codec, self.cut,
                                           self.head_cut)

    def loss(self, batch: dict[str, Tensor]) -> float:
        """A language model's mean masked token NLL over ``batch`` (no label smoothing)."""
        return float(self._forward(batch))

    def classifier(self) -> nn.Module:
        """The classifier as a module: ``(ids (B, T), attn_mask (B, T)) -> logits (B, labels)``."""
        return _SplitClassifier(self)

    def decodable(self) -> list[nn.Module | Stage]:
        """The decoding chain: this client's part(s) and the server's ``RemoteStage``."""
        remote = RemoteStage(self.server, self.rank, self.codec, self.shape.server_holds_head, self.meter)
        return self.shape.decode_stages(self.part, remote, self.cut, self.head_cut)


class _SplitClassifier(nn.Module):
    is_classifier = True

    def __init__(self, model: SplitModel) -> None:
        super().__init__()
        self.split = model

    def forward(self, ids: Tensor, attn_mask: Tensor) -> Tensor:
        device = ids.device
        batch = {"input_ids": ids, "loss_mask": attn_mask.float(), "targets": ids.new_zeros(len(ids))}
        return self.split._forward(batch).to(device)
