"""The tokenisation the COCO caption scorers see, in pure Python.

The official E2E scorer hands hypotheses and references to ``pycocoevalcap``'s
``COCOEvalCap``, which first runs the Stanford PTBTokenizer (CoreNLP 3.4.1,
Java, ``-preserveLines -lowerCase``) over every sentence and then drops a fixed
set of punctuation tokens. METEOR, ROUGE_L and CIDEr all score those token
strings, so their values depend on this step.

This module re-implements that tokenizer as a longest-match lexer (the way the
JFlex original works: at each position the longest match over all rules wins,
ties go to the earlier rule). It covers what English restaurant descriptions
contain -- words, hyphenated compounds, clitics (``it 's``, ``is n't``),
numbers, prices (``£`` becomes ``#``), abbreviations (``St.``, ``Rd.``),
quotes, brackets, dashes, ellipses -- and keeps Java out of the ROUGE_L/CIDEr
path, so those two metrics work (and agree) on machines without Java.
``tests/test_metrics_ptb.py`` checks it token for token against the real jar
on every E2E reference (train/dev/test, 51k sentences), the golden hypotheses
and the space-tokenised references; during development it also agreed on all
but 1 of 39k randomly punctuation-perturbed E2E sentences. Exotic input (URLs,
emoji, odd SGML) is handled approximately.

``coco_tokenize_java`` runs the real jar (shipped inside ``pycocoevalcap``) for
such checks.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

# Tokens the COCO wrapper removes after tokenising. Case-sensitive: with
# -lowerCase the brackets come out as "-lrb-" and are *not* removed (an
# upstream quirk that we keep).
COCO_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# ---- character classes (JFlex [:letter:] ~ Python "word char, not digit, not _") ----
_L = r"[^\W\d_]"
_LN = r"[^\W_]"  # letter or digit
_WORDCH = r"(?:[^\W\d_]|[\u00AD\u0300-\u036F])"
_APOS = r"(?:['\u0092\u2019]|&apos;)"
_APOSX = r"(?:['\u0092\u2019\u0091\u2018\u201B]|&apos;)"
_HYPHEN = r"[-_\u058A\u2010\u2011]"
_SPACE = r"[ \t\u00A0\u2000-\u200A\u3000]"
_NL = r"(?:\r\n?|\n|[\u2028\u2029\u000B\u000C\u0085])"
_ACRO = r"(?:[A-Za-z](?:\.[A-Za-z])+)"

# Abbreviations, measured on the 3.4.1 jar: ABBREV1 words may end a sentence (the
# jar then also emits a "." token); ABBREV2 words never do. Both keep their period.
_ABBREV1 = (
    r"Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept?|Oct|Nov|Dec|Mon|Tues?|Wed|Thu(?:rs)?|Fri"
    r"|Ala|Ariz|Ark|Calif|Colo|Conn|Dak|Del|Fla|Ga|Ill|Ind|Kans?|Ky|La|Mass|Md|Mich|Minn|Miss|Mo|Mont"
    r"|Neb|Nev|Okla|Ore|Pa|Penn|Tenn|Tex|Va|Vt|Wash|Wisc?|Wyo"
    r"|Jr|Sr|Bros|Blvd|Rd|Esq|Inc|Cos?|Corp|Pp?tys?|Ltd|Plc|Bancorp|Bhd|Assn|Univ|Intl|Sys"
    r"|tel|est|ext|sq|etc|al|seq"
)
_ABBREV2 = (
    r"Mr|Mrs|Ms|Miss|Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|Sgt|Cpl|Pvt|Mt"
    r"|Capt|Ste?|Ave|Pres|Lieut|Hon|Brig|Co?mdr|Pfc|Spc|Supts?|Det|Dept|Invt|Elec|Natl|M[ft]g|Ph|ft"
    r"|vs|Alex|Wm|Jos|Cie|a\.k\.a|cf|TREAS"
)
# A single letter + "." is an initial, except before these sentence starters
# (capitalised, as the jar matches them case-sensitively on the first letter).
_STARTERS = (
    r"A(?i:bout|ccording|dditionally|fter|n|s|t)?|B(?i:ut)|E(?i:arlier)|H(?i:e|er|ere|owever)|I(?i:f|n|t)"
    r"|L(?i:ast)|M(?i:any|ore|r\.|s\.)|N(?i:ow)|O(?i:nce|ne|ther|ur)|S(?i:he|ince|o|ome|uch)"
    r"|T(?i:hat|he|hen|here|hese|hey|his)|W(?i:e|hen|hile|hat)|Y(?i:et|ou)"
)
# XML-like tags are one token ("<b>", "<a href='x'>"); the jar checks tag syntax.
_XNAME = r"[A-Za-z_:][A-Za-z0-9_:.-]*"
_SGML = (
    rf"<(?:[!?][A-Za-z-][^>\r\n]*|/[A-Za-z][A-Za-z0-9_:.-]*|[A-Za-z][A-Za-z0-9_:.-]*"
    rf"(?: +{_XNAME}(?: *= *(?:'[^']*'|\"[^\"]*\"|[A-Za-z][A-Za-z0-9_:.-]*))?)* */?) *>"
)
_THING = rf"(?:[dDoOlL]{_APOSX}{_LN})?{_LN}+(?:{_HYPHEN}(?:[dDoOlL]{_APOSX}{_LN})?{_LN}+)*"
_HTHING = rf"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:[A-Za-z0-9\u00AD]+|{_ACRO}\.))+"


def _keep(tok: str) -> str:
    return tok


def _dashes(tok: str) -> str:
    return "--" if 3 <= len(tok) <= 4 else tok


def _quote(tok: str, left: bool) -> str:
    # latexQuotes: ASCII quotes become `` / ` (opening) or '' / ' (closing).
    tok = re.sub(r"&apos;|'", "`" if left else "'", tok)
    tok = re.sub(r'"|&quot;', "``" if left else "''", tok)
    tok = re.sub("[\u0091\u2018\u201b\u2039]", "`", tok)
    tok = re.sub("[\u0092\u2019\u203a]", "'", tok)
    tok = re.sub("[\u0093\u201c\u00ab]", "``", tok)
    return re.sub("[\u0094\u201d\u00bb]", "''", tok)


def _currency(tok: str) -> str:
    tok = tok.replace("\u00a2", "cents").replace("\u00a3", "#")
    return re.sub("[\u0080\u00a4\u20a0\u20ac]", "$", tok)


def _bracket(tok: str) -> str:
    return {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}.get(tok, tok)


# Each rule: (regex, action, split). The regex may end in a (?P<ctx>...) group: JFlex
# trailing context, which counts towards the match length but is not consumed.
# action(text) -> token (None drops it); split=n emits the first n chars and re-lexes
# the rest (JFlex yypushback).
_RULE_SPECS: list[tuple[str, Callable[[str], str | None], int]] = [
    (r"(?i:can)(?i:not)", _keep, 3),
    (r"(?i:gon)(?i:na)|(?i:got)(?i:ta)|(?i:lem)(?i:me)|(?i:gim)(?i:me)|(?i:wan)(?i:na)", _keep, 3),
    (_SGML, lambda t: t.replace(" ", "\u00a0"), 0),
    (r"&(?i:MD|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]", lambda t: "--", 0),
    (r"&amp;", lambda t: "&", 0),
    (rf"{_WORDCH}+(?P<ctx>{_APOS}(?:[msdMSD]|(?i:re|ve|ll)))", _keep, 0),
    (rf"[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*(?P<ctx>(?i:n){_APOSX}(?i:t))", _keep, 0),
    (rf"{_WORDCH}+", lambda t: t.replace("\u00ad", ""), 0),
    # Words with an apostrophe inside (one rule each: Python alternation is ordered,
    # JFlex picks the longest).
    (rf"{_APOS}n{_APOS}?", _keep, 0),
    (rf"[lLdDjJ]{_APOS}", _keep, 0),
    (rf"(?i:Dunkin|somethin|ol){_APOS}|{_APOS}(?i:em|till?|cause)|{_APOS}[2-9]0(?i:s)", _keep, 0),
    (rf"[A-HJ-XZn]{_APOSX}{_L}{{2,}}", _keep, 0),
    (rf"{_L}+[aeiouyAEIOUY]{_APOSX}[aeiouA-Z]{_L}*", _keep, 0),
    (r"(?i:cont'd\.?|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)", _keep, 0),
    (rf"(?i:y){_APOS}(?P<ctx>{_L})", _keep, 0),
    (r"https?://[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-]", _keep, 0),
    (
        r"(?:www\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4}"
        r"|(?:[^ \t\n\f\r\"`'<>|.!?(){},-_$]+\.)+(?:com|net|org|edu))"
        r"(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?",
        _keep,
        0,
    ),
    (r"[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00A0]*@(?:[^ \t\n\f\r\"<>|().\u00A0]+\.)*[^ \t\n\f\r\"<>|().\u00A0]+", _keep, 0),
    (rf"@[A-Za-z_][A-Za-z_0-9]*|#{_WORDCH}+", _keep, 0),  # Twitter-style names and hashtags
    (rf"{_APOS}(?:[msdMSD]|(?i:re|ve|ll))(?P<ctx>[^A-Za-z])", lambda t: _quote(t, False), 0),
    (rf"(?i:n){_APOSX}(?i:t)", lambda t: _quote(t, False), 0),
    (rf"{_APOS}(?i:t)(?P<ctx>(?i:is|was)(?![^\W_]))", lambda t: _quote(t, False), 0),  # 'tis, 'twas
    (r"\d{1,2}[-/]\d{1,2}[-/]\d{2,4}", _keep, 0),  # dates
    (r"[-+]?(?:\d*(?:[.:,\u00AD\u066B\u066C]\d+)+|\d+)", lambda t: t.replace("\u00ad", ""), 0),
    (r"(?:\d{1,4}[- \u00A0])?\d{1,4}(?:\\?/|\u2044)\d{1,4}", lambda t: t.replace(" ", "\u00a0"), 0),
    (r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}", _keep, 0),
    (r"[A-Z]*\$|#", _keep, 0),
    (r"(?i:c\+\+)", _keep, 0),
    (r"[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]", _currency, 0),
    # Dotted words ("e.g.offers", "a1.b2"); placed before the abbreviations, which
    # they beat on equal length.
    (rf"{_L}{_LN}*(?:\.{_L}{_LN}*)+(?:\.(?P<ctx>[,;:]))?", _keep, 0),
    # An acronym before a sentence starter ends the sentence: "u.s." then ".".
    (rf"{_ACRO}\.(?P<ctx>{_SPACE}+(?:{_STARTERS})(?:{_SPACE}|$))", _keep, -1),
    # An initial before a sentence starter is a word plus a full stop.
    (rf"[A-Za-z](?P<ctx>\.(?:{_SPACE}|{_NL})+(?:{_STARTERS})(?=\s))", _keep, 0),
    (rf"(?i:{_ABBREV1})\.(?P<ctx>(?:{_SPACE}|{_NL})(?:{_SPACE}|{_NL}|[A-Z]|<)|$)", _keep, -1),
    # JFlex matches these with two characters of trailing context, which makes them
    # beat a dotted word: "etc.a high" -> "etc." "a", but "RD.IN" stays whole.
    (rf"(?i:{_ABBREV1})\.(?P<ctx>[\s\S]{{2}})", _keep, 0),
    (rf"(?i:{_ABBREV1})\.", _keep, 0),
    (r"(?i:nos?)\.(?P<ctx>[ \t\u00A0]*\d)", _keep, 0),  # "No. 3"
    (rf"(?:{_ACRO}|(?i:{_ABBREV2})|[A-Za-z])\.", _keep, 0),
    (rf"(?:[A-Za-z]|(?i:{_ABBREV2}))(?P<ctx>{_SPACE})", _keep, 0),
    (rf"{_ACRO}(?P<ctx>{_SPACE}|{_NL})", _keep, 0),
    (rf"{_WORDCH}+\.(?P<ctx>[,;:])", lambda t: t.replace("\u00ad", ""), 0),
    (r"(?:\(\d{3}\)[ \u00A0]?|\d{3}[- \u00A0.])\d{3}[- \u00A0.]\d{4}", lambda t: t.replace(" ", "\u00a0"), 0),
    (r'(?:"|&quot;)(?P<ctx>[A-Za-z0-9$])', lambda t: _quote(t, True), 0),
    (r'"|&quot;', lambda t: _quote(t, False), 0),
    (r"[+%&\u2030\u2031~^|\\]", _keep, 0),
    (r"[:;]-?[()]|;\[", lambda t: t.replace("(", "-LRB-").replace(")", "-RRB-"), 0),  # smileys
    (r"[{}()\[\]]", _bracket, 0),
    (r"<<|>>|[<>]", _keep, 0),
    (r"-+", _dashes, 0),
    (r"\.{3,5}|(?:\.[ \u00A0]){2,4}\.|[\u0085\u2026]", lambda t: "...", 0),
    (r"@+|#+|_+|\*+", _keep, 0),
    (r"[,;:]|[?!]+|[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA]|=|/", _keep, 0),
    (rf"{_HTHING}\.(?P<ctx>[,;:])", _keep, 0),
    (_HTHING, _keep, 0),
    (rf"{_THING}\.(?P<ctx>[,;:])", _keep, 0),
    (_THING, _keep, 0),
    (r"[A-Z]+(?:(?:[+&]|&amp;)[A-Z]+)+", lambda t: t.replace("&amp;", "&"), 0),
    (r"'(?P<ctx>[A-Za-z][^ \t\n\r\u00A0])", lambda t: _quote(t, True), 0),
    (rf"{_APOS}(?:[msdMSD]|(?i:re|ve|ll))", lambda t: _quote(t, False), 0),  # "’spice" -> "'s" "pice"
    (
        r"''|[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091-\u0094\u201E\u201F\u2039\u203A\u00AB\u00BB]{1,2}"
        r"|['\u0092\u2019]|&apos;",
        lambda t: _quote(t, False),
        0,
    ),
    (
        r"[\u00A6\u00A7\u00A8\u00A9\u00AC\u00AE\u00AF\u00B0-\u00BA\u00D7\u00F7\u2020-\u2023\u2032-\u2038"
        r"\u2190-\u21FF\u2200-\u22FF\u2600-\u26FF]",
        _keep,
        0,
    ),
]


def _combine(
    specs: list[tuple[str, Callable[[str], str | None], int]],
) -> tuple[re.Pattern[str], list[tuple[int, int, Callable[[str], str | None], int]]]:
    """All rules in one pattern, one "match or nothing" lookahead per rule, so a single
    ``match`` call reports every rule's own match at a position (via ``m.regs``).

    Returns the pattern and, per rule, (match group, trailing-context group or 0,
    action, split).
    """
    parts = [f"(?=(?P<r{i}>{rx.replace('(?P<ctx>', f'(?P<c{i}>')})|)" for i, (rx, _, _) in enumerate(specs)]
    combined = re.compile("".join(parts))
    index = combined.groupindex
    table = [(index[f"r{i}"], index.get(f"c{i}", 0), action, split) for i, (_, action, split) in enumerate(specs)]
    return combined, table


_ALL_RULES, _RULE_TABLE = _combine(_RULE_SPECS)
_SPACES = re.compile(r"[^\S\n]+|[\u200B\u200E\u200F\uFEFF\x00]+")
# Runs of plain words (letters only, each followed by a space, a line end or the
# end) skip the rule search: every rule gives such a word back unchanged, except
# these few, which the jar splits.
_PLAIN_RUN = re.compile(rf"(?:{_WORDCH}+(?:[^\S\n]+|(?=\n)|\Z))+")
_SPLIT_WORDS = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])
_OTHER_NEWLINES = re.compile("[\r\u2028\u2029\u000b\u000c\u0085]")


def _lex(text: str) -> list[str | None]:
    """Longest-match lexing of ``text``; ``None`` marks each newline (-preserveLines)."""
    out: list[str | None] = []
    pos, end = 0, len(text)
    while pos < end:
        if text[pos] == "\n":
            out.append(None)
            pos += 1
            continue
        m = _SPACES.match(text, pos)
        if m:
            pos = m.end()
            continue
        m = _PLAIN_RUN.match(text, pos)
        if m:
            words = m.group().lower().split()
            if not _SPLIT_WORDS.intersection(words):
                out.extend(w.replace("\u00ad", "") for w in words)
                pos = m.end()
                continue
        regs = _ALL_RULES.match(text, pos).regs  # (start, end) of every group; (-1, -1) if unset
        best_end, best = pos, None
        for rule in _RULE_TABLE:  # longest match wins; on a tie the earlier rule
            end_ = regs[rule[0]][1]
            if end_ > best_end:
                best_end, best = end_, rule
        if best is None:  # untokenizable character: the jar deletes it
            pos += 1
            continue
        _, ctx, action, split = best
        stop = regs[ctx][0] if ctx and regs[ctx][0] >= 0 else best_end
        if split > 0:
            stop = pos + split
        tok = action(text[pos:stop])
        if tok:
            out.append(tok.lower())
        # split < 0: the token keeps its final ".", which is then lexed again on its own
        pos = stop + split if split < 0 else stop
    return out


def ptb_tokenize(text: str) -> list[str]:
    """Tokenise one sentence like PTBTokenizer 3.4.1 with ``-lowerCase``; punctuation is kept."""
    return [t for t in _lex(_OTHER_NEWLINES.sub(" ", text).replace("\n", " ")) if t is not None]


def coco_tokenize(texts: Sequence[str]) -> list[str]:
    """What the COCO scorers receive: PTB tokens minus punctuation, space-joined, per text.

    The wrapper tokenises all texts of one side (all references, or all
    hypotheses) as one file, one text per line, and the lexer looks across line
    ends (an initial such as "L." at a line end loses its period when the next
    line starts with "The"), so the texts are lexed together here as well, in the
    given order. Other line-break characters inside a text count as spaces (the
    jar would start a new line there and misalign every later text).
    """
    joined = "\n".join(_OTHER_NEWLINES.sub(" ", t).replace("\n", " ") for t in texts)
    lines: list[list[str]] = [[]]
    for tok in _lex(joined):
        if tok is None:
            lines.append([])
        else:
            lines[-1].append(tok)
    # Mirror the wrapper: split the jar's line on " " (a token holding a space
    # would split) and drop punctuation tokens.
    return [" ".join(w for w in " ".join(line).split(" ") if w not in COCO_PUNCTUATION) for line in lines]


def coco_tokenize_java(texts: Sequence[str], java: str = "java") -> list[str]:
    """Same as ``coco_tokenize``, but through the real CoreNLP 3.4.1 jar.

    Used to verify the Python lexer; needs ``java`` and ``pycocoevalcap``.
    """
    import pycocoevalcap.tokenizer.ptbtokenizer as ptbmod

    jar = Path(ptbmod.__file__).with_name(ptbmod.STANFORD_CORENLP_3_4_1_JAR)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", delete=False) as fh:
        # other line breaks become spaces first, as in coco_tokenize (the wrapper itself
        # would let the jar start a new line there and misalign every later text)
        fh.write("\n".join(_OTHER_NEWLINES.sub(" ", t).replace("\n", " ") for t in texts))
        path = Path(fh.name)
    try:
        cmd = [java, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
        proc = subprocess.run([*cmd, str(path)], capture_output=True, check=True)
    finally:
        path.unlink()
    lines = proc.stdout.decode("utf-8").split("\n")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in COCO_PUNCTUATION) for line in lines[: len(texts)]]
