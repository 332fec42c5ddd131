"""Every relative link in the project's markdown resolves: to a file or folder of the repository,
and, with an ``#anchor`` into a markdown file, to one of its headings (GitHub's heading ids).

Checked: README.md, CHANGELOG.md, docs/*.md and benchmarks/**/*.md. Links with a scheme
(http, https, mailto, ...) are not followed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# [text](target) and ![alt](target); the target stops at whitespace or ")" (an optional
# "title" after a space is ignored). Nested brackets in the text are not needed here.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def markdown_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md")),
             *sorted((REPO / "benchmarks").rglob("*.md"))]
    return [f for f in files if f.is_file()]


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans blanked."""
    out, fenced = [], False
    for n, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append((n, re.sub(r"`[^`]*`", lambda m: " " * len(m.group()), line)))
    return out


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every markdown link outside code."""
    return [(n, m.group(1)) for n, line in _prose_lines(text) for m in LINK.finditer(line)]


def slug(heading: str) -> str:
    """GitHub's id for a heading: markup and punctuation dropped, lower case, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The heading ids of a markdown file (repeated headings get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(md: Path, repo: Path = REPO) -> list[str]:
    """What is wrong with the relative links of ``md``, one line per broken link."""
    repo, text = repo.resolve(), md.read_text(encoding="utf-8")
    md = md.resolve()
    problems = []
    for line, target in links(text):
        if SCHEME.match(target):
            continue
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        where = f"{md.relative_to(repo)}:{line}: {target}"
        if not dest.exists():
            problems.append(f"{where} (no such file or folder)")
        elif not dest.is_relative_to(repo):
            problems.append(f"{where} (outside the repository)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            problems.append(f"{where} (no heading #{anchor} in {dest.relative_to(repo)})")
    return problems


def test_the_checked_files_exist_and_have_links() -> None:
    files = markdown_files()
    assert REPO / "README.md" in files and REPO / "CHANGELOG.md" in files
    assert any(f.parent == REPO / "docs" for f in files) and any(REPO / "benchmarks" in f.parents for f in files)
    assert sum(len(links(f.read_text(encoding="utf-8"))) for f in files) > 50


def test_every_relative_link_resolves() -> None:
    problems = [p for md in markdown_files() for p in broken_links(md)]
    assert not problems, "broken links:\n" + "\n".join(problems)


@pytest.mark.parametrize("target, ok", [
    ("docs/b.md", True), ("docs/b.md#a-heading", True), ("docs/b.md#no-such-heading", False),
    ("docs/missing.md", False), ("docs/", True), ("#top-heading", True), ("#nope", False),
    ("https://example.org/missing", True), ("mailto:someone@example.org", True), ("../outside.md", False),
])
def test_the_checker_finds_broken_links(tmp_path: Path, target: str, ok: bool) -> None:
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (tmp_path / "outside.md").write_text("# Outside\n")
    (repo / "docs" / "b.md").write_text("# B\n\n## A heading\n")
    md = repo / "a.md"
    md.write_text(f"# Top heading\n\nSee [this]({target}) and `[not a link](nowhere.md)`.\n\n"
                  "```\n[in code](nowhere.md)\n```\n")
    assert (broken_links(md, repo) == []) is ok


def test_heading_ids_follow_github() -> None:
    assert slug("Cut × rank sweep (the paper's RQ3) with BLEU") == "cut--rank-sweep-the-papers-rq3-with-bleu"
    assert slug("Strategies (runtime/strategies/)") == "strategies-runtimestrategies"
    assert slug("The latency report: `launch.bench`") == "the-latency-report-launchbench"
    assert anchors("# A\n## A\n") == {"a", "a-1"}
