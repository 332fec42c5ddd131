"""Every failure ends every rank non-zero, with a one-line message, in bounded time."""


import pytest

from tests.torchrun_util import torchrun

pytestmark = pytest.mark.slow


def _error_lines(stderr: str) -> list[str]:
    # A progress bar may share the line (stderr of all ranks is one stream): cut it off.
    return [ln[ln.index("splitlora: error"):] for ln in stderr.splitlines() if "splitlora: error" in ln]


@pytest.mark.parametrize("nproc, args, needle", [
    (1, ["--method=splitlora"], "WORLD_SIZE must be >= 2"),
    (2, ["--method=cenlora"], "runs in one process"),
    (3, ["--split.cut=4"], r"split.cut must be in [1, 3]"),
    (3, ["--split.cut=0"], r"split.cut must be in [1, 3]"),
    (3, ["--lora.r=0"], "lora.r must be >= 1"),
    (3, ["--data.source=e2e", "--data.dir=/nonexistent/e2e"], "--data.dir"),
])
def test_bad_launch_is_rejected_before_any_group(tmp_path, monkeypatch, capsys, nproc, args, needle):
    """Checked in-process (as every rank does before init_process_group): exit 2, one line."""
    from launch.train import main

    monkeypatch.setenv("WORLD_SIZE", str(nproc))
    monkeypatch.delenv("SPLITLORA_DATA", raising=False)
    argv = ([*args, f"--out.dir={tmp_path}", "--out.name=run", "--data.source=synthetic"]
            if not any(a.startswith("--data.source") for a in args) else [*args, f"--out.dir={tmp_path}"])
    for rank in range(nproc):
        monkeypatch.setenv("RANK", str(rank))
        assert main(argv) == 2
        lines = _error_lines(capsys.readouterr().err)
        if rank == 0 or "--data.dir" in needle:  # a config error is printed once, by rank 0
            assert len(lines) == 1 and needle in lines[0]
        else:
            assert lines == []
    assert not (tmp_path / "run" / "config.json").exists()  # nothing started


def test_bad_launch_under_torchrun_ends_every_rank(tmp_path):
    run = torchrun(3, ["--split.cut=4"], tmp_path, timeout=240)  # the bound is the test: no rank hangs
    assert run.rc != 0
    lines = _error_lines(run.stderr)
    assert len(lines) == 1 and "split.cut must be in [1, 3]" in lines[0]  # printed once, not once per rank
    assert not (run.run_dir / "config.json").exists()


def test_missing_data_names_the_variable_and_download_command(tmp_path):
    run = torchrun(1, ["--method=cenlora", "--data.source=e2e"], tmp_path, timeout=120,
                   env={"XDG_CACHE_HOME": str(tmp_path / "empty-cache")})
    assert run.rc != 0
    (line,) = set(_error_lines(run.stderr))
    assert "FileNotFoundError" in line and "SPLITLORA_DATA" in line and "splitlora-data download" in line


@pytest.mark.parametrize("method", ["splitlora", "fedlora"])
def test_client_raising_mid_step_ends_every_rank(tmp_path, method):
    # An RPC timeout (600 s) far above the run's hang guard (280 s): a rank that only ended by timing out
    # fails the test; the outcome checked is how the ranks ended, not how fast.
    run = torchrun(3, [f"--method={method}", "--train.max_steps=30", "--runtime.rpc_timeout=600"], tmp_path,
                   timeout=280, env={"SPLITLORA_INJECT_FAULT": "raise:2:3"})
    assert run.rc != 0
    lines = _error_lines(run.stderr)
    assert any("[rank 2]" in ln and "injected fault on rank 2 at step 3" in ln for ln in lines), run.stderr[-3000:]
    assert all("\n" not in ln for ln in lines)
    assert not any("timed out" in ln.lower() or "timeout" in ln.lower() for ln in lines)  # ended by propagation
    assert not (run.run_dir / "summary.json").exists()
