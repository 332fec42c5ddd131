"""Markdown helpers for the experiment tables."""

from __future__ import annotations

from collections.abc import Sequence

DASH = "–"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None) -> str:
    """A GitHub markdown table; ``align`` holds 'l' or 'r' per column (default: first left, rest right)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_metric(name: str, value: float | None, signed: bool = False) -> str:
    """One metric the way the paper prints it: BLEU/ROUGE_L 2 decimals (x100), NIST/CIDEr 4,
    METEOR 4 without the leading zero (.4421)."""
    if value is None:
        return DASH
    decimals = 2 if name in ("BLEU", "ROUGE_L") else 4
    text = f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"
    if name == "METEOR":
        text = text.replace("0.", ".", 1)
    return text


def fmt_cell(names: Sequence[str], values: Sequence[float | None] | None, signed: bool = False) -> str:
    """``67.95/8.6973/.4421/68.96/2.3412``, or a dash where there is nothing."""
    if values is None:
        return DASH
    return "/".join(fmt_metric(n, v, signed) for n, v in zip(names, values))


def fmt_count(n: float | None) -> str:
    if n is None:
        return DASH
    return f"{n:,.0f}"


def fmt_si(n: float | None, unit: str = "") -> str:
    """1.23 M, 456 k: for FLOPs and bytes."""
    if n is None:
        return DASH
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.3g} {prefix}{unit}"
    return f"{n:.3g} {unit}".rstrip()
