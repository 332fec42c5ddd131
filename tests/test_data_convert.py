"""Reading the E2E CSVs and converting them to the context||completion text format."""

from __future__ import annotations

import pytest

from runtime.data.e2e import (
    E2EItem,
    context_attributes,
    format_lines,
    group_by_mr,
    load_csv,
    mr_attributes,
    mr_to_context,
    parse_mr,
    read_csv,
    read_txt,
    style_for,
    write_refs_file,
    write_txt,
)
from runtime.data.ref_tokenize import tokenize_reference
from tests.e2e_data import E2E

LORA_E2E = None if E2E is None else next(
    (d for d in (E2E / "lora-e2e", E2E.parent / "lora-e2e") if (d / "test.txt").is_file()), None)


def needs_data(fn):
    """Mark a test as needing the real E2E data and skip it when that is absent."""
    skip = pytest.mark.skipif(LORA_E2E is None,
                              reason="E2E CSVs + lora-e2e/*.txt not found : set SPLITLORA_DATA (docs/data.md)")
    return pytest.mark.needs_data(skip(fn))


# ------------------------------------------------------------------ against the files


@needs_data
@pytest.mark.parametrize("csv_name,txt_name,n_lines,n_mrs", [
    ("devset.csv", "valid.txt", 4672, 547),
    ("testset_w_refs.csv", "test.txt", 4693, 630),
])
def test_reproduces_text_files_byte_for_byte(csv_name, txt_name, n_lines, n_mrs, tmp_path):
    items = load_csv(E2E / csv_name)
    expected = (LORA_E2E / txt_name).read_bytes()
    written = write_txt(items, tmp_path / txt_name).read_bytes()
    assert written == expected  # the whole file: order, spacing, trailing spaces, LF ends
    assert len(items) == n_lines
    groups = group_by_mr(items)
    assert len(groups) == n_mrs
    assert sum(len(g.refs) for g in groups) == sum(len(g.tok_refs) for g in groups) == n_lines
    # Reading the published file gives the same items and the same grouping.
    from_txt = read_txt(LORA_E2E / txt_name)
    assert [(i.context, i.completion) for i in from_txt] == [(i.context, i.completion) for i in items]
    assert [g.tok_refs for g in group_by_mr(from_txt)] == [g.tok_refs for g in groups]


# ----------------------------------------------------------------- hand-made examples


def test_mr_to_context():
    mr = "name[Alimentum], eatType[pub], priceRange[£20-25], area[city centre], familyFriendly[no]"
    assert mr_to_context(mr) == ("name : Alimentum | Type : pub | price : £ 20 - 25 | area : city centre"
                                 " | family friendly : no")
    assert context_attributes(mr_to_context(mr))["eatType"] == "pub"
    assert mr_attributes(mr)["priceRange"] == "£20-25"


@pytest.mark.parametrize("raw,dev,test", [
    ("Alimentum isn't family-friendly.", "Alimentum isn 't family - friendly . ",
     "Alimentum is n't family - friendly . "),
    ("It costs £20-£25, a 5-star pub.", "It costs £ 20- £ 25 , a 5 - star pub . ",
     "It costs £ 20-£25 , a 5-star pub . "),
    ("Rated 1 out of 5. in the centre", "Rated 1 out of 5. in the centre ", "Rated 1 out of 5 . in the centre "),
    ("called 'Aromi'.  Yes!", "called ' Aromi ' . Yes ! ", "called ' Aromi ' . Yes ! "),
    ("you'll love it.. thats it", "you 'll love it .. thats it ", "you 'll love it .. that s it "),
])
def test_reference_styles(raw, dev, test):
    assert tokenize_reference(raw, "dev") == dev
    assert tokenize_reference(raw, "test") == test


def test_unknown_style():
    with pytest.raises(ValueError, match="style"):
        tokenize_reference("x", "moses")


def test_style_per_split():
    assert style_for("testset_w_refs.csv") == "test"
    assert style_for("devset.csv") == style_for("trainset.csv") == "dev"


def test_csv_quoting_crlf_and_txt_round_trip(tmp_path):
    path = tmp_path / "devset.csv"
    path.write_bytes(b'mr,ref\r\n"name[A], area[riverside]","A, by the river, is ""nice""."\r\n'
                     b'name[B],B is\xc2\xa3 cheap.\r\n')
    rows = read_csv(path)
    assert rows == [("name[A], area[riverside]", 'A, by the river, is "nice".'), ("name[B]", "B is£ cheap.")]
    items = load_csv(path)
    assert items[0] == E2EItem("name : A | area : riverside", 'A , by the river , is " nice " .',
                               "name[A], area[riverside]", 'A, by the river, is "nice".')
    text = format_lines(items)
    assert text.endswith("||B is £ cheap . \n") and "\r" not in text  # trailing space, LF ends
    out = write_txt(items, tmp_path / "out" / "valid.txt")
    assert [(i.context, i.completion) for i in read_txt(out)] == [(i.context, i.completion) for i in items]


def test_group_by_mr_first_appearance_order(tmp_path):
    items = [E2EItem("c1", "a .", "m1", "a."), E2EItem("c2", "b .", "m2", "b."), E2EItem("c1", "c .", "m1", "c.")]
    groups = group_by_mr(items)
    assert [g.mr for g in groups] == ["m1", "m2"]
    assert groups[0].refs == ["a.", "c."] and groups[0].tok_refs == ["a .", "c ."]
    path = write_refs_file(groups, tmp_path / "refs.txt")
    assert path.read_text(encoding="utf-8") == "a.\nc.\n\nb.\n"


# ---------------------------------------------------------------------- bad input


def test_malformed_row_names_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('mr,ref\n"name[A]","fine."\n"name[B]","two","three"\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.csv: line 3: expected 2 fields"):
        read_csv(path)


def test_malformed_mr_names_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('mr,ref\n"name[A]","fine."\n"name[A], area riverside","broken MR."\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 3: malformed MR"):
        read_csv(path)


def test_unterminated_quote_is_value_error(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('mr,ref\n"name[A]","never closed\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.csv: line \d+"):
        read_csv(path)


def test_non_utf8(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("mr,ref\nname[A],costs £20\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"line 2: not valid UTF-8"):
        read_csv(path)


def test_wrong_header_and_missing_file(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("meaning,text\nname[A],x\n", encoding="utf-8")
    with pytest.raises(ValueError, match="header"):
        read_csv(path)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_csv(tmp_path / "nope.csv")


def test_bad_text_line(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("name : A||fine . \nno separator here\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 2"):
        read_txt(path)


@pytest.mark.parametrize("mr", ["", "name[A", "name[A] area[B]", "[A]"])
def test_parse_mr_errors(mr):
    with pytest.raises(ValueError):
        parse_mr(mr)
