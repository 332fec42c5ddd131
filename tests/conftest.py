"""Shared fixtures: a tiny random Hugging Face GPT-2 checkpoint and a tiny GPT2 of ours."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from models.gpt2 import GPT2, GPT2Config

TINY_HF = dict(vocab_size=101, n_positions=40, n_embd=32, n_layer=3, n_head=4)


def pytest_configure(config: pytest.Config) -> None:
    """A SIGTERM (``timeout``, a CI cancel, SLURM) ends the session as Ctrl-C does: the
    running test's jobs are stopped (tests/torchrun_util.py runs them in their own process
    group and ends it on an interrupt) and the summary and junit file are still written."""

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _interrupt)


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """(transformers GPT2LMHeadModel in eval mode, directory it was saved to with save_pretrained).

    Every parameter is randomised (HF zero-inits biases and sets LayerNorms to 1, which
    would hide mistakes in loading them).
    """
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        **TINY_HF,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.2)
    directory = tmp_path_factory.mktemp("hf_gpt2")
    hf.save_pretrained(directory)
    return hf, directory


@pytest.fixture(scope="session")
def hf_checkpoint_bin(hf_checkpoint, tmp_path_factory) -> Path:
    """The same weights as ``pytorch_model.bin`` in the original OpenAI-converted key style:
    no ``transformer.`` prefix, causal-mask ``attn.bias``/``attn.masked_bias`` buffers."""
    hf, src = hf_checkpoint
    directory = tmp_path_factory.mktemp("hf_gpt2_bin")
    state = {k.removeprefix("transformer."): v.clone() for k, v in hf.state_dict().items()}
    n = TINY_HF["n_positions"]
    for i in range(TINY_HF["n_layer"]):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n, dtype=torch.bool))[None, None]
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, directory / "pytorch_model.bin")
    (directory / "config.json").write_text(json.dumps(json.loads((src / "config.json").read_text())))
    return directory


@pytest.fixture
def tiny_model() -> GPT2:
    """A small random GPT2 of ours in eval mode (3 blocks, vocab 97)."""
    torch.manual_seed(1)
    cfg = GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=3, n_head=4)
    return GPT2(cfg).eval()


@pytest.fixture(scope="session")
def pretrained_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A micro base pretrained for a few seconds on the synthetic data (compact vocabulary).

    Built once per test session; tests that need a base that has learned something use it.
    """
    from runtime.pretrain import pretrain, pretrain_config

    out = tmp_path_factory.mktemp("micro_base")
    cfg = pretrain_config("micro", ["--data.source=synthetic", "--train.max_steps=120", "--train.warmup_steps=10",
                                    "--ckpt.every=60", "--data.max_eval_examples=64"])
    pretrain(cfg, out)
    return out


@pytest.fixture(scope="session")
def encoder_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random transformers BERT and RoBERTa directories with word-level tokenizers (tests/encoder_util.py)."""
    pytest.importorskip("transformers")
    from tests.encoder_util import build_encoder_dir

    root = tmp_path_factory.mktemp("encoders")
    return {kind: build_encoder_dir(root / kind, kind) for kind in ("bert", "roberta")}
