"""Each party builds only what it holds, with exactly the weights of the whole model."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from models.gpt2 import GPT2, GPT2Config
from models.init_replay import replay_draws
from models.parts import build_keep, finish_part, piece_of
from models.split import split_model
from models.split_u import split_model_u
from runtime.build import build_full_model, build_part
from runtime.config.parse import build_config
from runtime.split.shapes import part_pieces

N_LAYER = 4  # the tiny preset


def _cfg(*extra: str):
    return build_config(["--model.name=tiny", "--lora.r=2", "--lora.targets=q,v,mlp_fc", *extra])


def _assert_same(part: torch.nn.Module, ref: torch.nn.Module) -> None:
    a, b = part.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    flags = {n: p.requires_grad for n, p in ref.named_parameters()}
    assert {n: p.requires_grad for n, p in part.named_parameters()} == flags


@pytest.mark.parametrize("shape", ["vanilla", "u"])
def test_random_init_part_equals_the_part_cut_from_the_whole_model(shape):
    cuts = [(c, h) for c in range(1, N_LAYER) for h in ([None] if shape == "vanilla" else range(c + 1, N_LAYER + 1))]
    for cut, head in cuts:
        extra = [f"--split.shape={shape}", f"--split.cut={cut}"] + ([f"--split.head_cut={head}"] if head else [])
        cfg = _cfg(*extra)
        whole = build_full_model(cfg)
        after_whole = torch.rand(4)  # where the generator stands after the build (dropout draws follow)
        ref_client, ref_server = split_model(whole, cut) if shape == "vanilla" else split_model_u(whole, cut, head)
        client = build_part(cfg, "client")
        assert torch.equal(torch.rand(4), after_whole), (cut, head)
        server = build_part(cfg, "server")
        _assert_same(client, ref_client)
        _assert_same(server, ref_server)
        if shape == "u":
            assert client.lm_head.weight is client.transformer.wte.weight  # tied on the client
        else:
            assert not server.lm_head.weight.requires_grad  # the frozen copy of wte


@pytest.mark.parametrize("shape", ["vanilla", "u"])
def test_checkpoint_part_reads_only_its_tensors(pretrained_base, monkeypatch, shape):
    from safetensors import safe_open

    n_layer = GPT2.from_pretrained(pretrained_base).config.n_layer
    read: list[str] = []
    real = safe_open

    class Recording:
        def __init__(self, *a, **k):
            self.f = real(*a, **k)

        def __enter__(self):
            self.inner = self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def keys(self):
            return self.inner.keys()

        def get_tensor(self, k):
            read.append(k)
            return self.inner.get_tensor(k)

    import safetensors

    for cut in range(1, n_layer):
        cfg = _cfg(f"--model.path={pretrained_base}", f"--split.shape={shape}", f"--split.cut={cut}")
        whole = build_full_model(cfg)
        ref_client, ref_server = split_model(whole, cut) if shape == "vanilla" else split_model_u(whole, cut)
        for role, ref in (("client", ref_client), ("server", ref_server)):
            read.clear()
            monkeypatch.setattr(safetensors, "safe_open", Recording)
            part = build_part(cfg, role)
            monkeypatch.undo()
            _assert_same(part, ref)
            held = build_keep(part_pieces(n_layer, role, shape, cut))
            assert read and {piece_of(k if k.startswith("transformer.") else "transformer." + k) for k in read} <= held
            other = {f"transformer.h.{i}" for i in range(n_layer)} - held
            assert not any(piece_of("transformer." + k.removeprefix("transformer.")) in other for k in read)


class _NewBytes(TorchDispatchMode):
    """Bytes of every new storage created on a real device while active (freed or not)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {t.untyped_storage().data_ptr() for t in torch.utils._pytree.tree_leaves((args, kwargs or {}))
                  if isinstance(t, torch.Tensor) and not t.is_meta}
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and not t.is_meta:
                ptr = t.untyped_storage().data_ptr()
                if ptr not in inputs and ptr not in self.seen:
                    self.seen.add(ptr)
                    self.total += t.untyped_storage().nbytes()
        return out


def test_building_a_part_never_allocates_the_whole_model():
    # Large blocks, small vocabulary: a client at cut 1 holds an eighth of the blocks.
    mc = GPT2Config(vocab_size=128, n_positions=64, n_embd=256, n_layer=8, n_head=4)
    torch.manual_seed(0)
    whole_bytes = sum(p.numel() * 4 for p in GPT2(mc).parameters())
    pieces = part_pieces(8, "client", "vanilla", 1)
    replay_draws("uniform", 16)  # the replay buffer exists once per process: not part of any build
    torch.manual_seed(0)
    with _NewBytes() as counter:
        part = finish_part(GPT2(mc, keep=build_keep(pieces).__contains__), pieces)
    part_bytes = sum(p.numel() * 4 for p in part.parameters())
    assert part_bytes < whole_bytes / 5
    assert counter.total <= part_bytes + 64 * 1024, (counter.total, part_bytes, whole_bytes)
