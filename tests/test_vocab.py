"""The compact vocabulary map: ids in and out, unknown tokens, saving, and every E2E reference."""

from __future__ import annotations

import pytest

from runtime.data.tokenizer import EOS_ID, decode, encode, load_gpt2_tokenizer
from runtime.data.vocab import STOP_IDS, VocabMap, load_vocab_map
from tests.e2e_data import E2E, needs_data


def test_ids_map_in_order_and_unknowns_share_one_id():
    vm = VocabMap([5, EOS_ID, 17, 628])
    assert vm.size == 5 and vm.unk_id == 4
    assert vm.to_model([17, 5, EOS_ID, 628]) == [2, 0, 1, 3]
    assert vm.to_model([6, 40000, 0]) == [4, 4, 4]  # every id outside the subset -> the one unknown id
    assert vm.to_gpt2([2, 0, 4, 1]) == [17, 5, EOS_ID]  # the unknown id has no text
    assert vm.eos_id == 1 and vm.coverage([5, 6]) == 0.5


def test_bad_maps_are_refused():
    with pytest.raises(ValueError, match="stop ids"):
        VocabMap([1, 2, 3])
    with pytest.raises(ValueError, match="distinct"):
        VocabMap([1, 1, *STOP_IDS])
    with pytest.raises(ValueError, match="outside"):
        VocabMap([50257, *STOP_IDS])


def test_saved_map_loads_back(tmp_path):
    vm = VocabMap.from_corpus([[9, 3, 9], [200]])
    assert vm.gpt2_ids == [3, 9, 200, 628, EOS_ID]
    vm.save(tmp_path)
    assert load_vocab_map(tmp_path) == vm
    assert load_vocab_map(tmp_path / "absent") is None and load_vocab_map(None) is None
    (tmp_path / "vocab_map.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a vocabulary map"):
        load_vocab_map(tmp_path)


def test_text_round_trips_through_the_map():
    text = " The Eagle is a coffee shop near Burger King ."
    vm = VocabMap.from_corpus([encode(text)])
    assert decode(vm.to_gpt2(vm.to_model(encode(text)))) == text
    unseen = vm.to_model(encode(" Zanzibar"))
    assert set(unseen) == {vm.unk_id}


@needs_data
def test_every_e2e_reference_round_trips():
    """The vocabulary of the training split (its tokenised references + MR contexts) covers every
    training reference exactly; dev/test references (the model's text style: space-tokenised)
    round-trip wherever their tokens were seen in training, and those with an unseen token
    (a name that never occurs in training) are rare."""
    from runtime.data.dataset import _batch_encode
    from runtime.data.e2e import group_by_mr
    from runtime.data.locate import load_splits

    splits = load_splits(E2E, "e2e")
    tok = load_gpt2_tokenizer()
    train = [" " + it.completion for it in splits.train]
    vm = VocabMap.from_corpus(_batch_encode(tok, train + list({it.context for it in splits.train})))
    assert 3_000 < vm.size < 3_300

    def check(texts: list[str]) -> int:
        unseen = 0
        for text, row in zip(texts, _batch_encode(tok, texts)):
            mapped = vm.to_model(row)
            if vm.unk_id in mapped:
                unseen += 1
            else:
                assert tok.decode(vm.to_gpt2(mapped), clean_up_tokenization_spaces=False) == text
        return unseen

    assert check(train) == 0
    for split in ("valid", "test"):
        refs = [" " + r for g in group_by_mr(splits[split]) for r in g.tok_refs]
        assert len(refs) == len(splits[split])
        assert check(refs) < 0.05 * len(refs), split  # measured: test 139 of 4,693 (3.0 %)
    for split in ("train", "valid", "test"):  # every MR context, the prompts, is covered
        contexts = list({it.context for it in splits[split]})
        assert all(vm.unk_id not in row for row in map(vm.to_model, _batch_encode(tok, contexts))), split
