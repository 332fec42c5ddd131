"""Config tree: precedence (CLI > file > defaults), typing, validation before any group starts."""

import json
from pathlib import Path

import pytest

from runtime.config import Config, ConfigError, validate_for_world
from runtime.config.parse import build_config, config_from_dict


def test_defaults_are_the_offline_tiny_split_run():
    cfg = build_config([])
    assert cfg.method == "splitlora" and cfg.model.name == "tiny" and cfg.data.source == "auto"


def test_cli_overrides_file_overrides_defaults(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"train": {"lr": 0.001, "batch_size": 2}, "lora": {"r": 8}}))
    cfg = build_config(["--config", str(f), "--train.lr=0.005", "--lora.alpha", "16", "--method", "fedlora"])
    assert cfg.train.lr == 0.005  # CLI beats file
    assert cfg.train.batch_size == 2  # file beats default
    assert cfg.lora.r == 8 and cfg.lora.alpha == 16.0 and cfg.method == "fedlora"


def test_yaml_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("split:\n  cut: 2\ndata:\n  pad_to_seq_len: true\n")
    cfg = build_config(["--config", str(f)])
    assert cfg.split.cut == 2 and cfg.data.pad_to_seq_len is True


def test_round_trip_through_json():
    cfg = build_config(["--lora.r=2", "--model.path=/x"])
    again = config_from_dict(json.loads(cfg.to_json()))
    assert again == cfg


@pytest.mark.parametrize("argv, needle", [
    (["--lora.r=0"], "lora.r"),
    (["--train.batch_size=-1"], "train.batch_size"),
    (["--train.lr=abc"], "train.lr"),
    (["--method=magic"], "method"),
    (["--nosuch.key=1"], "nosuch"),
    (["--train.nosuch=1"], "train.nosuch"),
    (["--split.cut_dtype=int8"], "split.cut_dtype"),
    (["--data.partition=zipf"], "data.partition"),
    (["--data.pad_to_seq_len=maybe"], "data.pad_to_seq_len"),
    (["--fed.weighting=median"], "fed.weighting"),
    (["--train.max_steps=1.5"], "train.max_steps"),
    (["--split.batch_window_ms=-1"], "split.batch_window_ms"),
    (["--split.max_batch_clients=-2"], "split.max_batch_clients"),
    (["--split.server_batching=true", "--split.shape=u"], "split.server_batching supports split.shape=vanilla"),
    (["--split.server_batching=true", "--split.client_cuts=1,2"], "split.server_batching needs one cut"),
    (["--lora.layers=1,x"], "lora.layers"),
    (["--lora.layers=-1"], "lora.layers"),
    (["--runtime.client_backend=mpi"], "runtime.client_backend"),
    (["--runtime.client_backend=nccl", "--runtime.device=cpu"], "runtime.client_backend"),
])
def test_bad_values_name_the_field(argv, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        build_config(argv)


def test_world_checks():
    cfg = build_config([])
    with pytest.raises(ConfigError, match="WORLD_SIZE must be >= 2"):
        validate_for_world(cfg, 1, 4)
    with pytest.raises(ConfigError, match=r"split\.cut must be in \[1, 3\]"):
        validate_for_world(build_config(["--split.cut=4"]), 3, 4)
    with pytest.raises(ConfigError, match="one process"):
        validate_for_world(build_config(["--method=cenlora"]), 3, 4)
    validate_for_world(cfg, 3, 4)  # 2 clients + server, cut 3 of 4: fine
    assert isinstance(cfg, Config)


def test_client_slowdown_and_cuts_are_checked_against_the_world():
    with pytest.raises(ConfigError, match="client_slowdown factors must be >= 1"):
        build_config(["--runtime.client_slowdown=0.5,1"])
    with pytest.raises(ConfigError, match="2 factor"):
        validate_for_world(build_config(["--runtime.client_slowdown=1,3"]), 4, 4)
    with pytest.raises(ConfigError, match="client_cuts gives 1 cut"):
        validate_for_world(build_config(["--split.client_cuts=2"]), 3, 4)
    with pytest.raises(ConfigError, match="client_ranks gives 1 rank"):
        validate_for_world(build_config(["--fed.client_ranks=2"]), 3, 4)
    with pytest.raises(ConfigError, match="r_k must be <= r_G"):
        validate_for_world(build_config(["--fed.client_ranks=2,8", "--lora.r=4"]), 3, 4)


def test_lora_layers_parse_and_leave_every_party_an_adapter():
    assert build_config(["--lora.layers=3,1..2,1"]).lora.layer_list() == (1, 2, 3)
    assert build_config([]).lora.layer_list() is None
    with pytest.raises(ConfigError, match="names block 4; the model has blocks 0..3"):
        validate_for_world(build_config(["--method=cenlora", "--lora.layers=4"]), 1, 4)
    validate_for_world(build_config(["--method=cenlora", "--lora.layers=3"]), 1, 4)
    validate_for_world(build_config(["--method=fedlora", "--lora.layers=0"]), 3, 4)
    split = ["--method=splitlora", "--split.cut=2"]
    with pytest.raises(ConfigError, match="leaves the clients with cut 2 no adapter"):
        validate_for_world(build_config([*split, "--lora.layers=2..3"]), 3, 4)
    with pytest.raises(ConfigError, match="leaves the server no adapter for cut 2"):
        validate_for_world(build_config([*split, "--lora.layers=0,1"]), 3, 4)
    validate_for_world(build_config([*split, "--lora.layers=1,2"]), 3, 4)
    with pytest.raises(ConfigError, match="leaves the clients with cut 1"):  # per-client cuts: each is checked
        validate_for_world(build_config([*split, "--split.client_cuts=1,2", "--lora.layers=1,2"]), 3, 4)
    # u shape: the client's back end (blocks head_cut..) counts for the client
    u = ["--method=splitlora", "--split.shape=u", "--split.cut=1", "--split.head_cut=3"]
    validate_for_world(build_config([*u, "--lora.layers=1,3"]), 3, 4)
    with pytest.raises(ConfigError, match="server no adapter"):
        validate_for_world(build_config([*u, "--lora.layers=0,3"]), 3, 4)
    validate_for_world(build_config(["--train.finetune=full", "--method=cenlora", "--lora.layers=9"]), 1, 4)


def _dotted_keys(cls, prefix=""):
    import dataclasses

    from runtime.config.parse import _field_types

    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _dotted_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name


def test_help_lists_every_key_with_type_default_and_meaning(capsys):
    from launch.train import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out.splitlines()
    keys = list(_dotted_keys(Config))
    assert len(keys) > 60
    for key in keys:
        (i,) = [n for n, line in enumerate(out) if line.strip().startswith(f"--{key}=")]
        assert "(default " in out[i], key
        assert out[i + 1].startswith("      ") and len(out[i + 1].strip()) > 5, key  # its one-line meaning
    assert "[train]" in out and "[model]" in out


def test_u_shape_checks() -> None:
    validate_for_world(build_config(["--split.shape=u", "--split.cut=1", "--split.head_cut=3"]), 3, 4)
    validate_for_world(build_config(["--split.shape=u", "--split.cut=3"]), 3, 4)  # head_cut 0 = n_layer
    with pytest.raises(ConfigError, match="split.shape must be vanilla\\|u"):
        build_config(["--split.shape=w"])
    with pytest.raises(ConfigError, match="head_cut applies to split.shape=u only"):
        build_config(["--split.head_cut=3"])
    with pytest.raises(ConfigError, match=r"split.head_cut must be in \[3, 4\]"):
        validate_for_world(build_config(["--split.shape=u", "--split.cut=2", "--split.head_cut=2"]), 3, 4)
    with pytest.raises(ConfigError, match=r"split.head_cut must be in"):
        validate_for_world(build_config(["--split.shape=u", "--split.cut=1", "--split.head_cut=5"]), 3, 4)
    with pytest.raises(ConfigError, match="not implemented for split.shape=u"):
        validate_for_world(build_config(["--split.shape=u", "--split.cut=1", "--split.client_cuts=1,2"]), 3, 4)


def test_train_head_needs_a_classifier() -> None:
    with pytest.raises(ConfigError, match=r"model\.train_head applies to an encoder's classification head"):
        validate_for_world(build_config(["--model.train_head=true"]), 3, 4)


def test_the_committed_configuration_reference_is_current():
    from runtime.config.help import config_markdown

    committed = (Path(__file__).resolve().parents[1] / "docs/config-reference.md").read_text()
    assert committed == config_markdown(), "regenerate: python -m runtime.config.help > docs/config-reference.md"
    for key in _dotted_keys(Config):
        assert f"`--{key}`" in committed
