"""LoRA-A2 (Koo et al., "Towards Robust and Efficient Federated Low-Rank Adaptation with
Heterogeneous Clients", arXiv 2410.22815): alternating freeze + adaptive rank selection.

Every adapter has B (out, r_G) and A (r_G, in); B starts at 0 and A at the shared random
init (every rank builds the same model from the same seed). Round t trains one factor F:
odd rounds B (A frozen), even rounds A (B frozen) — Algorithm 1's order; starting with A
would train nothing while B = 0. The other factor is shared and fixed during the round, so

    sum_k w_k (B + dB_k) A = (B + sum_k w_k dB_k) A        (B-round; the A-round likewise)

and the aggregate of the product is exact. lr_B = ``fed.lr_b_ratio`` * lr_A (LoRA+).

Rank selection, per client per round, with budget r_k (``fed.client_ranks``):
  1. probe: ``fed.probe_steps`` local steps of F from the global adapter -> dF;
  2. score every slot (module m, rank i): B-round |dB[:, i]|·|A[i, :]|, A-round |B[:, i]|·|dA[i, :]|
     (the Frobenius norm of the rank-1 change rank i makes to B·A);
  3. keep the top r_k·N slots over the whole model (N = number of adapters; a module
     may get 0..r_G of them);
  4. reset F and the optimizer state the probe touched; train with every update masked:
     the unselected entries of F and of its optimizer state are restored after every
     optimizer step, so gradients, Adam moments and weight decay never move them;
  5. upload the selected slots and their indices; every client then applies
     F <- F + sum_k w_k · zero_fill(dF_k) (zero-filled weighted sum, not re-normalised).

With r_k = r_G every slot is selected, so the probe is skipped (it cannot change the mask).
With ``train.grad_clip`` > 0 the clipping norm (taken before ``before_step``) still counts
the gradients of unselected slots; the update of those slots is zero either way.

Accounting (payload, not the collective's buffer): up = selected slots × slot size × dtype
size + 4 bytes (int32 flat slot index) per slot; down = the union of the slots any client
touched, sent the same way (the others did not change). The collective itself sums one dense
zero-filled buffer per client plus the (N, r_G) selection counts that give that union.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from models.lora import iter_lora_adapters, set_lora_trainable
from runtime.strategies.base import ClientContext, CommStats, Strategy, flat_allreduce_sum

INDEX_BYTES = 4  # one int32 flat (module, rank) index per uploaded slot


def round_factor(round_idx: int) -> str:
    """The factor trained in 1-based round ``round_idx``: "B" in odd rounds, "A" in even ones."""
    return "B" if round_idx % 2 == 1 else "A"


def slot_view(keep: Tensor, factor: str) -> Tensor:
    """keep (r,) shaped to broadcast over a factor: B (out, r) -> (1, r); A (r, in) -> (r, 1)."""
    return keep[None, :] if factor == "B" else keep[:, None]


def rank_scores(delta: Tensor, other: Tensor, factor: str) -> Tensor:
    """Scores (r,) of one module's ranks.

    B-round: delta = dB (out, r), other = A (r, in): ‖dB[:, i]‖·‖A[i, :]‖.
    A-round: delta = dA (r, in), other = B (out, r): ‖B[:, i]‖·‖dA[i, :]‖.
    """
    if factor == "B":
        return delta.norm(dim=0) * other.norm(dim=1)
    return other.norm(dim=0) * delta.norm(dim=1)


def select_slots(scores: Tensor, budget: int) -> Tensor:
    """Bool mask (N, r) of the ``budget`` highest scores over the whole model (ties: lower index)."""
    flat = scores.reshape(-1)
    order = torch.argsort(flat, descending=True, stable=True)[: min(budget, flat.numel())]
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=scores.device)
    keep[order] = True
    return keep.view(scores.shape)


def aggregate_lora_a2(global_factors: list[Tensor], deltas: list[list[Tensor]], masks: list[Tensor],
                      weights: list[float], factor: str) -> list[Tensor]:
    """Reference maths of one round: F_m + sum_k w_k · zero_fill(dF_{k,m}).

    global_factors[m]: the round's starting F of module m; deltas[k][m]: client k's change
    (same shape); masks[k]: client k's bool (N, r) selection. Not re-normalised per slot.
    """
    out = [g.clone() for g in global_factors]
    for w, client_deltas, mask in zip(weights, deltas, masks):
        for m, d in enumerate(client_deltas):
            out[m] += w * d * slot_view(mask[m], factor)
    return out


def sparse_payload(mask: Tensor, slot_numel: list[int], element_size: int) -> tuple[int, int]:
    """(params, bytes) of sending the slots in ``mask`` (N, r): values plus an int32 index each.

    slot_numel[m]: entries in one slot of module m (B column: out; A row: in).
    """
    per_module = mask.sum(dim=1).tolist()  # slots selected in each module
    params = int(sum(n * s for n, s in zip(per_module, slot_numel)))
    return params, params * element_size + int(sum(per_module)) * INDEX_BYTES


class LoRAA2(Strategy):
    """LoRA-A2: alternating freeze, per-round top-(r_k·N) slot selection, masked local training."""

    name = "lora-a2"
    uses_rank_budgets = True
    options = ("lr_b_ratio", "probe_steps")

    def __init__(self, lr_b_ratio: float = 5.0, probe_steps: int = 5) -> None:
        self.lr_b_ratio = lr_b_ratio
        self.probe_steps = probe_steps
        self.factor = "B"
        self.global_factors: list[Tensor] = []  # F of every module at the start of the round
        self.mask: Tensor | None = None  # (N, r_G) bool; None = no masking (probe, or every slot kept)
        self.n_selected = 0
        self._saved: list[tuple[nn.Parameter, Tensor, Tensor, dict[str, Tensor]]] = []
        self._module: nn.Module | None = None
        self._device = torch.device("cpu")

    def param_groups(self, module: nn.Module, lr: float) -> list[dict[str, Any]]:
        adapters = [a for _, a in iter_lora_adapters(module)]
        return [{"params": [a.lora_A for a in adapters], "lr": lr},
                {"params": [a.lora_B for a in adapters], "lr": lr * self.lr_b_ratio}]

    def setup(self, ctx: ClientContext) -> None:
        self._module, self._device = ctx.module, ctx.device

    def _trained(self, ctx: ClientContext) -> list[nn.Parameter]:
        return [a.lora_B if self.factor == "B" else a.lora_A for _, a in ctx.adapters()]

    def _other(self, ctx: ClientContext) -> list[nn.Parameter]:
        return [a.lora_A if self.factor == "B" else a.lora_B for _, a in ctx.adapters()]

    def begin_round(self, ctx: ClientContext, round_idx: int) -> None:
        self.factor = round_factor(round_idx)
        set_lora_trainable(ctx.module, A=self.factor == "A", B=self.factor == "B")
        params = self._trained(ctx)
        self.global_factors = [p.detach().clone() for p in params]
        n, r = len(params), ctx.global_rank
        self.mask = None
        if ctx.rank_budget >= r:
            self.n_selected = n * r
            if ctx.lockstep and ctx.probe is not None:
                self._probe(ctx, params)  # the same server calls as the probing clients; result unused
            return
        deltas = self._probe(ctx, params)
        scores = torch.stack([rank_scores(d, o.detach(), self.factor)
                              for d, o in zip(deltas, self._other(ctx))])  # (N, r_G)
        self.mask = select_slots(scores, ctx.rank_budget * n)
        self.n_selected = int(self.mask.sum())

    def _probe(self, ctx: ClientContext, params: list[nn.Parameter]) -> list[Tensor]:
        """Train F unmasked for ``probe_steps`` steps; return dF per module and undo everything."""
        if ctx.probe is None:
            raise RuntimeError("lora-a2 needs ctx.probe to select ranks (r_k < r_G)")
        opt = ctx.optimizer
        state = {p: {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
                 for p in params if p in opt.state}
        ctx.probe(self.probe_steps)
        deltas = [p.detach() - g for p, g in zip(params, self.global_factors)]
        with torch.no_grad():
            for p, g in zip(params, self.global_factors):
                p.copy_(g)
        for p in params:
            if p in state:
                opt.state[p] = state[p]
            else:
                opt.state.pop(p, None)
        return deltas

    def before_step(self, ctx: ClientContext) -> None:
        """Snapshot the unselected entries of F and of its optimizer state (and zero their grads)."""
        self._saved = []
        if self.mask is None:
            return
        for p, keep in zip(self._trained(ctx), self.mask):
            keep_v = slot_view(keep, self.factor)  # broadcasts over p
            if p.grad is not None:
                p.grad.mul_(keep_v)
            st = ctx.optimizer.state.get(p, {})
            moments = {k: v.clone() for k, v in st.items() if torch.is_tensor(v) and v.shape == p.shape}
            self._saved.append((p, keep_v, p.detach().clone(), moments))

    def after_step(self, ctx: ClientContext) -> None:
        """Put the unselected entries back: values and every per-entry optimizer tensor."""
        with torch.no_grad():
            for p, keep_v, value, moments in self._saved:
                p.copy_(torch.where(keep_v, p, value))
                for k, v in ctx.optimizer.state.get(p, {}).items():
                    if torch.is_tensor(v) and v.shape == p.shape:
                        old = moments.get(k)  # absent: the step created it; its initial value is 0
                        v.copy_(torch.where(keep_v, v, old if old is not None else torch.zeros_like(v)))
        self._saved = []

    def aggregate(self, ctx: ClientContext, round_idx: int) -> CommStats:
        params = self._trained(ctx)
        n, r = len(params), ctx.global_rank
        mask = self.mask if self.mask is not None else torch.ones(n, r, dtype=torch.bool, device=ctx.device)
        # Zero-filled weighted deltas (the unselected entries are exactly 0 already), plus the
        # selection itself so every client learns the union of touched slots.
        deltas = [(p.detach() - g) * slot_view(keep, self.factor) * ctx.weight
                  for p, g, keep in zip(params, self.global_factors, mask)]
        *summed, counts = flat_allreduce_sum(deltas + [mask.float()], ctx.group)
        with torch.no_grad():
            for p, g, s in zip(params, self.global_factors, summed):
                p.copy_(g + s)
        slot_numel = [p.shape[0] if self.factor == "B" else p.shape[1] for p in params]
        size = params[0].element_size()
        up_params, up_bytes = sparse_payload(mask, slot_numel, size)
        down_params, down_bytes = sparse_payload(counts > 0, slot_numel, size)
        return CommStats(up_params=up_params, up_bytes=up_bytes, down_params=down_params, down_bytes=down_bytes)

    def state_dict(self) -> dict[str, Any]:
        return {"factor": self.factor, "global_factors": [g.cpu() for g in self.global_factors],
                "mask": None if self.mask is None else self.mask.cpu(), "n_selected": self.n_selected}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.factor = state["factor"]
        self.global_factors = [g.to(self._device) for g in state["global_factors"]]
        self.mask = None if state["mask"] is None else state["mask"].to(self._device)
        self.n_selected = state["n_selected"]
        if self._module is not None:  # resumed mid-round: begin_round will not run again for it
            set_lora_trainable(self._module, A=self.factor == "A", B=self.factor == "B")
