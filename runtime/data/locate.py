"""Finding the E2E data and loading the train/valid/test splits.

Search order for the data directory: the ``--data.dir`` flag, the ``SPLITLORA_DATA``
environment variable, then the per-user cache (``$XDG_CACHE_HOME/splitlora/e2e`` or
``~/.cache/splitlora/e2e``, where ``splitlora-data download`` puts it). A directory is
accepted when it holds the three official CSVs, directly or under ``e2e-dataset/``.

``load_splits(source="auto")`` uses E2E when found and otherwise the synthetic dataset
(:mod:`runtime.data.synthetic`), saying so in ``Splits.note``. A flag or variable that
points at a directory without the CSVs is an error even then: a typo must not silently
train on synthetic data.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runtime.data.e2e import CSV_FILES, E2EItem, convert_rows, read_csv, style_for
from runtime.data.synthetic import MARKER as SYNTHETIC_MARKER
from runtime.data.synthetic import SOURCE as SYNTHETIC_SOURCE
from runtime.data.synthetic import generate_synthetic

ENV_VAR = "SPLITLORA_DATA"
FLAG = "--data.dir"
DOWNLOAD_COMMAND = "splitlora-data download"
SOURCES = ("auto", "e2e", "synthetic")

# SHA-256 of the CSVs of the official release (tuetschek/e2e-dataset v1.0.0).
CSV_SHA256 = {
    "trainset.csv": "f27d48df45815288ab15619d47a79028c300fbb7f42e373668aba0b98c1d57c6",
    "devset.csv": "fc26b78cdb849c80545f513b223d1e051138b43882eeb79e3eb153e689c864f9",
    "testset_w_refs.csv": "edc8db685e39bb9824d5bd70c18b1c9b0412d14b527aa960e2d1c8251ee15ccd",
}


def cache_dir() -> Path:
    """The per-user data cache: ``$XDG_CACHE_HOME/splitlora/e2e`` (``~/.cache`` default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "splitlora" / "e2e"


def csv_dir(path: str | Path) -> Path | None:
    """The directory holding the three CSVs: ``path`` or ``path/e2e-dataset``; else None."""
    root = Path(path).expanduser()
    for cand in (root, root / "e2e-dataset"):
        if all((cand / name).is_file() for name in CSV_FILES.values()):
            return cand
    return None


def _not_found(problem: str) -> FileNotFoundError:
    names = ", ".join(CSV_FILES.values())
    return FileNotFoundError(
        f"{problem}. Expected {names} in a directory (or its e2e-dataset/ subfolder) given by "
        f"{FLAG} DIR, or by the environment variable {ENV_VAR}, or in the cache {cache_dir()}. "
        f"Fetch the official release there with: {DOWNLOAD_COMMAND}"
    )


def find_data_dir(flag: str | Path | None = None) -> Path:
    """The directory holding the E2E CSVs; ``FileNotFoundError`` naming the flag, the
    variable and the download command when there is none."""
    if flag is not None and str(flag) != "":
        found = csv_dir(flag)
        if found is None:
            raise _not_found(f"{FLAG}={flag} does not hold the E2E CSVs")
        return found
    env = os.environ.get(ENV_VAR)
    if env:
        found = csv_dir(env)
        if found is None:
            raise _not_found(f"{ENV_VAR}={env} does not hold the E2E CSVs")
        return found
    found = csv_dir(cache_dir())
    if found is None:
        raise _not_found(f"no E2E data found ({FLAG} and {ENV_VAR} unset, cache empty)")
    return found


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_checksums(directory: str | Path, expected: dict[str, str] | None = None) -> None:
    """Check the CSVs in ``directory`` against :data:`CSV_SHA256`; ``ValueError`` listing
    every mismatching or missing file."""
    expected = CSV_SHA256 if expected is None else expected
    problems = []
    for name, digest in expected.items():
        path = Path(directory) / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif (got := sha256_file(path)) != digest:
            problems.append(f"{name}: sha256 {got}, expected {digest}")
    if problems:
        raise ValueError(f"checksum verification failed in {directory}: " + "; ".join(problems))


@dataclass
class Splits:
    """Converted train/valid/test items and where they came from."""

    train: list[E2EItem]
    valid: list[E2EItem]
    test: list[E2EItem]
    source: str  # "e2e" | "synthetic"
    data_dir: Path | None = None
    note: str = ""
    raw: dict[str, list[tuple[str, str]]] = field(default_factory=dict, repr=False)

    @property
    def is_synthetic(self) -> bool:
        return self.source == SYNTHETIC_SOURCE

    def __getitem__(self, split: str) -> list[E2EItem]:
        if split not in CSV_FILES:
            raise KeyError(f"unknown split {split!r}; expected one of {tuple(CSV_FILES)}")
        return getattr(self, split)


def _convert(raw: dict[str, list[tuple[str, str]]], limits: Mapping[str, int] | None = None
             ) -> dict[str, list[E2EItem]]:
    # Each split in the tokenisation style of its reference file (see ref_tokenize). Rows convert
    # one by one, so converting a prefix gives the prefix of the whole conversion.
    limits = limits or {}
    return {split: convert_rows(rows[: limits.get(split, len(rows))], style_for(CSV_FILES[split]))
            for split, rows in raw.items()}


def load_splits(data_dir: str | Path | None = None, source: str = "auto", synthetic_seed: int = 0,
                limits: Mapping[str, int] | None = None) -> Splits:
    """Load and convert the three splits.

    ``source``: ``"e2e"`` (error when not found), ``"synthetic"`` (generated, seeded by
    ``synthetic_seed``), or ``"auto"``: E2E when :func:`find_data_dir` finds it, else
    synthetic. Conversion runs in memory (~3 s for the 42k train rows). ``limits``: split ->
    how many leading rows to convert (the others stay raw only), for a run that uses no more.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; expected one of {SOURCES}")
    explicit = (data_dir is not None and str(data_dir) != "") or bool(os.environ.get(ENV_VAR))
    if source == "synthetic":
        return _synthetic(synthetic_seed, "SYNTHETIC data requested (source='synthetic')", limits)
    try:
        found = find_data_dir(data_dir)
    except FileNotFoundError as e:
        if source == "e2e" or explicit:
            raise
        return _synthetic(synthetic_seed, f"SYNTHETIC data, since no E2E data was found: {e}", limits)
    raw = {split: read_csv(found / name) for split, name in CSV_FILES.items()}
    conv = _convert(raw, limits)
    if (found / SYNTHETIC_MARKER).exists():
        return Splits(**conv, source=SYNTHETIC_SOURCE, data_dir=found, raw=raw,
                      note=f"SYNTHETIC data from {found} (marked {SYNTHETIC_MARKER})")
    sizes = ", ".join(f"{k} {len(v)}" for k, v in raw.items())  # the files', whatever was converted
    return Splits(**conv, source="e2e", data_dir=found, raw=raw, note=f"E2E data from {found} ({sizes})")


def _synthetic(seed: int, note: str, limits: Mapping[str, int] | None = None) -> Splits:
    raw = generate_synthetic(seed)
    return Splits(**_convert(raw, limits), source=SYNTHETIC_SOURCE, data_dir=None, raw=raw, note=f"{note}; seed {seed}")
