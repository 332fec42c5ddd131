"""Finding the data, loading splits, checksums and the splitlora-data CLI (never downloads)."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile

import pytest

from launch.data import extract_release
from launch.data import main as data_main
from runtime.data.locate import (
    CSV_SHA256,
    cache_dir,
    find_data_dir,
    load_splits,
    verify_checksums,
)
from runtime.data.synthetic import MARKER, write_synthetic_csvs


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No SPLITLORA_DATA, and a private, empty per-user cache."""
    monkeypatch.delenv("SPLITLORA_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path


def _fake_e2e(root):
    """Small CSVs in the official layout, without the synthetic marker (an "E2E" copy)."""
    out = write_synthetic_csvs(root, seed=0, n_train_mrs=30, n_eval_mrs=5)
    (out / MARKER).unlink()
    return out


def test_cache_dir_honours_xdg(clean_env):
    assert cache_dir() == clean_env / "xdg" / "splitlora" / "e2e"


def test_missing_data_names_flag_variable_and_command(clean_env):
    with pytest.raises(FileNotFoundError) as err:
        find_data_dir(None)
    msg = str(err.value)
    assert "--data.dir" in msg and "SPLITLORA_DATA" in msg and "splitlora-data download" in msg
    with pytest.raises(FileNotFoundError, match="--data.dir=.*nowhere"):
        find_data_dir(clean_env / "nowhere")


def test_search_order(clean_env, monkeypatch):
    flat = _fake_e2e(clean_env / "flat")
    nested = _fake_e2e(clean_env / "nested" / "e2e-dataset")
    cached = _fake_e2e(cache_dir() / "e2e-dataset")
    assert find_data_dir(None) == cached
    monkeypatch.setenv("SPLITLORA_DATA", str(clean_env / "nested"))
    assert find_data_dir(None) == nested  # the variable beats the cache; e2e-dataset/ accepted
    assert find_data_dir(str(flat)) == flat  # the flag beats the variable; CSVs directly
    monkeypatch.setenv("SPLITLORA_DATA", str(clean_env / "empty"))
    with pytest.raises(FileNotFoundError, match="SPLITLORA_DATA="):
        find_data_dir(None)


def test_load_splits_sources(clean_env):
    auto = load_splits(None)
    assert auto.is_synthetic and "SYNTHETIC" in auto.note and "no E2E data" in auto.note
    with pytest.raises(FileNotFoundError, match="splitlora-data download"):
        load_splits(None, source="e2e")
    with pytest.raises(FileNotFoundError):  # an explicit but wrong path never falls back
        load_splits(clean_env / "typo", source="auto")
    with pytest.raises(ValueError, match="source"):
        load_splits(None, source="webnlg")
    real = load_splits(_fake_e2e(clean_env / "d"), source="e2e")
    assert real.source == "e2e" and not real.is_synthetic
    assert len(real["train"]) == len(real.train) > 0 and real.raw["test"]
    with pytest.raises(KeyError, match="unknown split"):
        real["dev"]


def test_checksum_verification_on_fake_files(tmp_path):
    (tmp_path / "trainset.csv").write_bytes(b"mr,ref\n")
    digest = hashlib.sha256(b"mr,ref\n").hexdigest()
    verify_checksums(tmp_path, {"trainset.csv": digest})
    with pytest.raises(ValueError, match="trainset.csv: sha256"):
        verify_checksums(tmp_path, {"trainset.csv": "0" * 64})
    with pytest.raises(ValueError, match="devset.csv: missing"):
        verify_checksums(tmp_path)  # the real constants: fake file mismatches, others missing
    assert set(CSV_SHA256) == {"trainset.csv", "devset.csv", "testset_w_refs.csv"}


def test_extract_release_takes_base_names_only(tmp_path):
    zpath = tmp_path / "e2e-dataset.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for name in CSV_SHA256:
            zf.writestr(f"e2e-dataset/{name}", "mr,ref\n")
        zf.writestr("../escape/README.md", "readme")
        zf.writestr("e2e-dataset/testset.csv", "mr\n")
    out = extract_release(zpath, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "devset.csv", "testset_w_refs.csv", "trainset.csv"]
    assert not (tmp_path / "escape").exists()
    shutil.rmtree(out)
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("e2e-dataset/devset.csv", "mr,ref\n")
    with pytest.raises(ValueError, match="lacks"):
        extract_release(zpath, tmp_path / "out")


def test_cli_convert_and_stats(clean_env, capsys):
    out = clean_env / "txt"
    assert data_main(["convert", "--source", "synthetic", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["test.txt", "train.txt", "valid.txt"]
    assert "||" in (out / "valid.txt").read_text(encoding="utf-8").splitlines()[0]
    capsys.readouterr()
    assert data_main(["stats", "--source", "synthetic", "--split", "valid", "--clients", "2",
                      "--partition", "dirichlet:1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["source"] == "synthetic" and report["tokens"]["n"] == sum(report["partition"]["sizes"])
    assert data_main(["stats", "--data.dir", str(clean_env / "missing")]) == 2
    assert "splitlora-data download" in capsys.readouterr().err
    assert data_main(["stats", "--source", "synthetic", "--partition", "dirichlet:abc"]) == 2


def test_limits_convert_a_prefix_of_each_split(clean_env):
    """A run that reads N rows gets exactly the first N of the whole conversion; the note keeps
    the files' sizes."""
    whole = load_splits(None, source="synthetic", synthetic_seed=3)
    some = load_splits(None, source="synthetic", synthetic_seed=3, limits={"train": 40, "valid": 5, "test": 0})
    assert some.train == whole.train[:40] and some.valid == whole.valid[:5] and some.test == []
    assert some.raw == whole.raw
    d = _fake_e2e(clean_env / "d")
    full, capped = load_splits(d, source="e2e"), load_splits(d, source="e2e", limits={"train": 1})
    assert capped.train == full.train[:1] and capped.valid == full.valid and capped.note == full.note
