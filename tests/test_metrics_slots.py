"""Copy accuracy of the name/near slots: parsing, matching rules, rates."""

import pytest

from metrics.slots import parse_mr, slot_copied, slot_copy_rates


def test_parse_mr_reads_every_slot():
    mr = "name[The Mill], eatType[pub], priceRange[less than £20], near[Café Rouge]"
    assert parse_mr(mr) == {"name": "The Mill", "eatType": "pub", "priceRange": "less than £20",
                            "near": "Café Rouge"}
    assert parse_mr("") == {}


def test_matching_is_by_whole_words_ignoring_case_punctuation_spacing():
    assert slot_copied("Café Sicilia", "It is near café sicilia .")
    assert slot_copied("The Mill", "The Mill, a pub.")
    assert not slot_copied("The Mill", "Mill is a pub")
    assert not slot_copied("Strada", "Stradale is a pub")  # a prefix of a word is not the name
    assert not slot_copied("The Eagle", "The Wrestlers is near the river")


def test_rates_count_only_the_mrs_that_have_the_slot():
    mrs = ["name[The Mill], near[Café Rouge]", "name[Strada]", "name[Zizzi], near[The Bakers]"]
    hyps = ["The Mill is near Café Rouge .", "The Wrestlers is a pub .", "Zizzi is near The Sorrento ."]
    rates = slot_copy_rates(mrs, hyps)
    assert rates == {"name": 2 / 3, "n_name": 3, "near": 1 / 2, "n_near": 2}
    assert slot_copy_rates(["name[A]"], ["A"], slots=("near",)) == {"near": None, "n_near": 0}
    with pytest.raises(ValueError, match="2 texts for 1 MRs"):
        slot_copy_rates(["name[A]"], ["A", "B"])
