"""Reading the E2E NLG data and converting it to the ``context||completion`` format.

Official CSVs (``trainset.csv``, ``devset.csv``, ``testset_w_refs.csv``): a header
``mr,ref`` then one row per human reference; MRs look like
``name[Alimentum], area[city centre], familyFriendly[no]``.

Text format (``lora-e2e/valid.txt``, ``test.txt``): one line per reference, in CSV row
order, ``context||completion `` with a trailing space, LF line ends, a final LF:

    name : Alimentum | area : city centre | family friendly : no||There is a place ... .

The context renames three attributes (``eatType`` -> ``Type``, ``priceRange`` ->
``price``, ``familyFriendly`` -> ``family friendly``) and tokenises the values
(``£20-25`` -> ``£ 20 - 25``); the completion is the tokenised reference
(:mod:`runtime.data.ref_tokenize`). An :class:`E2EItem` keeps the completion without the
trailing space: the reference training code strips each line before splitting it.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from runtime.data.ref_tokenize import tokenize_reference, tokenize_value

CSV_FILES = {"train": "trainset.csv", "valid": "devset.csv", "test": "testset_w_refs.csv"}
ATTRIBUTES = ("name", "eatType", "food", "priceRange", "customer rating", "area", "familyFriendly", "near")
_CONTEXT_NAMES = {"eatType": "Type", "priceRange": "price", "familyFriendly": "family friendly"}
_CSV_NAMES = {v: k for k, v in _CONTEXT_NAMES.items()}
_MR_PART = re.compile(r"\s*([^\[\],]+?)\s*\[([^\[\]]*)\]\s*")
SEPARATOR = "||"


@dataclass(frozen=True)
class E2EItem:
    """One (MR, reference) pair in both its raw and its converted form."""

    context: str  # "name : Alimentum | area : city centre"
    completion: str  # tokenised reference, no trailing space
    mr: str = ""  # raw CSV MR; "" when read from a text file
    ref: str = ""  # raw CSV reference; "" when read from a text file

    def line(self) -> str:
        """The line of the text format (without its line end)."""
        return f"{self.context}{SEPARATOR}{self.completion} "


@dataclass
class MRGroup:
    """All references of one MR, for evaluation (one hypothesis per group)."""

    context: str
    mr: str = ""
    refs: list[str] = field(default_factory=list)  # raw CSV references ([] for text input)
    tok_refs: list[str] = field(default_factory=list)  # tokenised references


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"E2E file not found: {path}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def read_csv(path: str | Path) -> list[tuple[str, str]]:
    """``(mr, ref)`` rows of an official E2E CSV (header ``mr,ref``; CRLF or LF).

    A row that does not have exactly two fields, or whose MR does not parse, raises
    ``ValueError`` naming the file and the line.
    """
    path = Path(path)
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[str, str]] = []
    try:
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header] != ["mr", "ref"]:
            raise ValueError(f"{path}: line 1: expected the header 'mr,ref', got {header!r}")
        for fields in reader:
            line = reader.line_num
            if not fields:
                continue  # a blank line
            if len(fields) != 2:
                raise ValueError(f"{path}: line {line}: expected 2 fields (mr, ref), got {len(fields)}")
            mr, ref = fields
            try:
                parse_mr(mr)
            except ValueError as e:
                raise ValueError(f"{path}: line {line}: {e}") from None
            if not ref.strip():
                raise ValueError(f"{path}: line {line}: empty reference")
            rows.append((mr, ref))
    except csv.Error as e:
        raise ValueError(f"{path}: line {reader.line_num}: malformed CSV ({e})") from None
    return rows


def parse_mr(mr: str) -> list[tuple[str, str]]:
    """``"name[X], area[Y]"`` -> ``[("name", "X"), ("area", "Y")]`` (order kept)."""
    pairs: list[tuple[str, str]] = []
    pos = 0
    text = mr.strip()
    while pos < len(text):
        m = _MR_PART.match(text, pos)
        if m is None:
            raise ValueError(f"malformed MR {mr!r} at character {pos}")
        pairs.append((m.group(1), m.group(2).strip()))
        pos = m.end()
        if pos < len(text):
            if text[pos] != ",":
                raise ValueError(f"malformed MR {mr!r}: expected ',' at character {pos}")
            pos += 1
    if not pairs:
        raise ValueError(f"empty MR {mr!r}")
    return pairs


def mr_attributes(mr: str) -> dict[str, str]:
    """Attribute -> value of a raw MR (for partitioning and descriptions)."""
    return dict(_parse_cached(mr))


@functools.lru_cache(maxsize=65536)
def _parse_cached(mr: str) -> tuple[tuple[str, str], ...]:
    # Partitioning looks up 42k MRs of which ~4.9k are distinct.
    return tuple(parse_mr(mr))


def context_attributes(context: str) -> dict[str, str]:
    """Attribute -> (tokenised) value of a converted context, with the CSV attribute
    names: ``"Type : pub | price : cheap"`` -> ``{"eatType": "pub", "priceRange": "cheap"}``."""
    out = {}
    for part in context.split(" | "):
        key, sep, value = part.partition(" : ")
        if not sep:
            raise ValueError(f"malformed context {context!r}: expected 'attribute : value' parts")
        out[_CSV_NAMES.get(key, key)] = value
    return out


def mr_to_context(mr: str) -> str:
    """``name[Alimentum], familyFriendly[no]`` -> ``name : Alimentum | family friendly : no``."""
    return " | ".join(f"{_CONTEXT_NAMES.get(k, k)} : {tokenize_value(v)}" for k, v in parse_mr(mr))


def style_for(csv_name: str) -> str:
    """Tokenisation style of a split: test.txt used the "test" style, the rest "dev"."""
    return "test" if Path(csv_name).name.startswith("testset") else "dev"


def convert_rows(rows: Iterable[tuple[str, str]], style: str = "dev") -> list[E2EItem]:
    """Raw ``(mr, ref)`` rows -> items, in row order."""
    contexts: dict[str, str] = {}  # ~4k distinct MRs for 42k rows
    items = []
    for mr, ref in rows:
        ctx = contexts.get(mr)
        if ctx is None:
            ctx = contexts[mr] = mr_to_context(mr)
        items.append(E2EItem(ctx, tokenize_reference(ref, style).rstrip(" "), mr, ref))
    return items


def load_csv(path: str | Path, style: str | None = None) -> list[E2EItem]:
    """Read an official CSV and convert it; ``style`` defaults to :func:`style_for`."""
    return convert_rows(read_csv(path), style or style_for(str(path)))


def format_lines(items: Iterable[E2EItem]) -> str:
    """The text-format file contents: one line per item, LF ends, a final LF."""
    return "".join(item.line() + "\n" for item in items)


def write_txt(items: Iterable[E2EItem], path: str | Path) -> Path:
    """Write the text format (UTF-8, LF) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(format_lines(items).encode("utf-8"))
    return path


def read_txt(path: str | Path) -> list[E2EItem]:
    """Read the ``context||completion`` format (CRLF accepted; blank lines skipped)."""
    path = Path(path)
    items = []
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        parts = line.split(SEPARATOR)
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise ValueError(f"{path}: line {n}: expected 'context{SEPARATOR}completion', got {line[:80]!r}")
        items.append(E2EItem(parts[0].strip(), parts[1].strip()))
    return items


def group_by_mr(items: Sequence[E2EItem]) -> list[MRGroup]:
    """One group per distinct MR (first-appearance order) with all its references."""
    groups: dict[str, MRGroup] = {}
    for item in items:
        key = item.mr or item.context
        group = groups.get(key)
        if group is None:
            group = groups[key] = MRGroup(context=item.context, mr=item.mr)
        if item.ref:
            group.refs.append(item.ref)
        group.tok_refs.append(item.completion)
    return list(groups.values())


def write_refs_file(groups: Sequence[MRGroup], path: str | Path, tokenized: bool = False) -> Path:
    """References in the official scorer's layout: a group's refs on consecutive lines,
    groups separated by one blank line."""
    # Collapse whitespace: a few raw train references contain line breaks.
    blocks = ["\n".join(" ".join(r.split()) for r in (g.tok_refs if tokenized or not g.refs else g.refs))
              for g in groups]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return path
