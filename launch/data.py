"""``splitlora-data``: fetch, convert and inspect the E2E data.

    splitlora-data download                 # official release zip -> per-user cache, SHA-256 checked
    splitlora-data convert --out DIR        # train.txt / valid.txt / test.txt (context||completion)
    splitlora-data stats --clients 3 --partition dirichlet:0.5

(``python -m launch.data ...`` is the same.) ``convert`` and ``stats`` find the data via
``--data.dir``, ``SPLITLORA_DATA`` or the cache, and fall back to the synthetic dataset
with ``--source auto`` (the default), saying so.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from runtime.data.e2e import CSV_FILES, write_txt
from runtime.data.locate import CSV_SHA256, SOURCES, cache_dir, load_splits, verify_checksums
from runtime.data.partition import describe_partition, parse_scheme, partition

RELEASE_URL = "https://github.com/tuetschek/e2e-dataset/releases/download/v1.0.0/e2e-dataset.zip"
_REPO_ROOT = Path(__file__).resolve().parents[1]


def download(dest: Path | None = None, url: str = RELEASE_URL, force: bool = False) -> Path:
    """Download the release zip, extract the CSVs (and README) into ``dest/e2e-dataset``
    and verify their SHA-256; returns that directory."""
    target = (dest or cache_dir()) / "e2e-dataset"
    if not force and target.is_dir():
        try:
            verify_checksums(target)
            print(f"already present and verified: {target}")
            return target
        except ValueError:
            pass  # incomplete or corrupted: fetch again
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        zip_path = Path(tmp) / "e2e-dataset.zip"
        print(f"downloading {url}")
        with urllib.request.urlopen(url, timeout=60) as resp, open(zip_path, "wb") as f:
            shutil.copyfileobj(resp, f)
        extracted = Path(tmp) / "extracted"
        extract_release(zip_path, extracted)
        verify_checksums(extracted)  # before anything lands in the cache
        target.mkdir(exist_ok=True)
        for item in extracted.iterdir():
            shutil.move(str(item), target / item.name)
    print(f"E2E data verified and stored in {target}")
    return target


def extract_release(zip_path: Path, out_dir: Path) -> Path:
    """Copy the CSVs and README of the release zip into ``out_dir`` by base name only
    (member paths are never used as paths, so a hostile zip cannot write elsewhere)."""
    wanted = set(CSV_SHA256) | {"README.md"}
    out_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            name = info.filename.rsplit("/", 1)[-1]
            if name in wanted and not info.is_dir():
                (out_dir / name).write_bytes(zf.read(info))
                wanted.discard(name)
    missing = sorted(wanted & set(CSV_SHA256))
    if missing:
        raise ValueError(f"{zip_path} lacks {', '.join(missing)}")
    return out_dir


def _warn_if_in_repo(out: Path) -> None:
    try:
        out.resolve().relative_to(_REPO_ROOT)
    except ValueError:
        return
    print(f"warning: {out} is inside the repository; never commit E2E data or derived files", file=sys.stderr)


def cmd_convert(args: argparse.Namespace) -> int:
    splits = load_splits(args.data_dir, args.source, args.synthetic_seed)
    print(splits.note)
    out = Path(args.out)
    _warn_if_in_repo(out)
    for split in args.splits.split(","):
        path = write_txt(splits[split], out / f"{split}.txt")
        print(f"wrote {path} ({len(splits[split])} lines)")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from runtime.data.dataset import encode_items, length_stats

    splits = load_splits(args.data_dir, args.source, args.synthetic_seed)
    items = splits[args.split]
    examples = encode_items(items)
    report = {"source": splits.source, "note": splits.note, "split": args.split,
              "tokens": length_stats(examples, seq_len=args.seq_len)}
    if args.clients:
        scheme = parse_scheme(args.partition)
        parts = partition(items, args.clients, args.partition, args.seed)
        report["partition"] = {"scheme": args.partition, "seed": args.seed,
                               **describe_partition(parts, items, scheme.attribute)}
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    print(report["note"])
    t = report["tokens"]
    print(f"{args.split}: {t['n']} examples; tokens (context + 50256 + completion + 50256): mean {t['mean']:.1f}, "
          f"median {t['median']:.0f}, p99 {t['p99']:.0f}, max {t['max']}"
          + (f"; {t['truncated']} longer than seq_len {args.seq_len}" if args.seq_len else ""))
    if "partition" in report:
        p = report["partition"]
        print(f"partition {p['scheme']} (seed {p['seed']}), {p['n_clients']} clients, by {p['attribute']}:")
        for k, (size, hist) in enumerate(zip(p["sizes"], p["histograms"])):
            print(f"  client {k}: {size:6d} items  {hist}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    download(Path(args.dir) if args.dir else None, args.url, args.force)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="splitlora-data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    dl = sub.add_parser("download", help="fetch the official E2E release into the cache and verify it")
    dl.add_argument("--dir", help=f"destination (default: the per-user cache, now {cache_dir()})")
    dl.add_argument("--url", default=RELEASE_URL)
    dl.add_argument("--force", action="store_true", help="download even if a verified copy exists")
    dl.set_defaults(func=cmd_download)

    def data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data.dir", dest="data_dir", default=None, help="directory with the E2E CSVs")
        p.add_argument("--source", choices=SOURCES, default="auto")
        p.add_argument("--synthetic-seed", type=int, default=0)

    cv = sub.add_parser("convert", help="write train/valid/test .txt in the context||completion format")
    data_args(cv)
    cv.add_argument("--out", required=True, help="output directory (outside the repository)")
    cv.add_argument("--splits", default=",".join(CSV_FILES), help="comma-separated subset of train,valid,test")
    cv.set_defaults(func=cmd_convert)

    st = sub.add_parser("stats", help="token-length statistics and a partition description")
    data_args(st)
    st.add_argument("--split", choices=tuple(CSV_FILES), default="train")
    st.add_argument("--seq-len", type=int, default=None, help="count examples longer than this")
    st.add_argument("--clients", type=int, default=3, help="describe a partition over this many clients (0: none)")
    st.add_argument("--partition", default="iid", help="iid | contiguous | dirichlet:<alpha>[:<attribute>]")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--json", action="store_true", help="print the report as JSON")
    st.set_defaults(func=cmd_stats)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError, KeyError) as e:  # OSError: missing files, network errors
        print(f"splitlora-data {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
