"""launch/gpu_tests.py: the CUDA tests in shards side by side, merged into one JUnit file."""

import signal
import subprocess
import sys
import time
from pathlib import Path

from launch.gpu_report import read_tests
from launch.gpu_tests import overall, shard

REPO = Path(__file__).resolve().parents[1]
CONFTEST = '''import signal
def pytest_configure(config):
    def _interrupt(signum, frame):
        raise KeyboardInterrupt(signum)
    signal.signal(signal.SIGTERM, _interrupt)
'''


def _suite(tmp_path: Path, body: str) -> Path:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_some.py").write_text(body)
    return tmp_path / "test_some.py"


def _start(tmp_path: Path, suite: Path, shards: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "launch.gpu_tests", f"--shards={shards}",
                             f"--junit={tmp_path / 'tests.xml'}", f"--log={tmp_path / 'tests.log'}", "--", str(suite)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_round_robin_shards_keep_every_test_once():
    ids = [f"t{i}" for i in range(7)]
    assert [shard(ids, i, 3) for i in range(3)] == [["t0", "t3", "t6"], ["t1", "t4"], ["t2", "t5"]]
    assert shard(ids[:2], 2, 3) == []  # an empty shard: pytest exits 5 there, which is no failure
    assert overall([0, 5, 0]) == 0 and overall([0, 1, 5]) == 1 and overall([5, 5]) == 5 and overall([2, 0]) == 2


def test_shards_merge_into_one_report_and_a_failure_fails_the_run(tmp_path):
    suite = _suite(tmp_path, "def test_a(): pass\ndef test_b(): assert 1 == 2\ndef test_c(): pass\n")
    proc = _start(tmp_path, suite, shards=2)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, err
    tests = read_tests(tmp_path / "tests.xml")
    assert tests["counts"]["passed"] == 2 and tests["counts"]["failed"] == 1
    assert sorted(c["name"] for c in tests["cases"]) == ["test_a", "test_b", "test_c"]
    log = (tmp_path / "tests.log").read_text()
    assert "== shard 1/2, exit 0 ==" in log and "== shard 2/2, exit 1 ==" in log and "2 shards, exit 1" in err


def test_a_sigterm_stops_every_shard_and_still_merges(tmp_path):
    suite = _suite(tmp_path, "import time\ndef test_quick(): pass\n"
                   "def test_slow_1(): time.sleep(60)\ndef test_slow_2(): time.sleep(60)\n")
    proc = _start(tmp_path, suite, shards=3)
    time.sleep(8.0)  # the shards start (pytest imports) and the slow tests reach their sleep
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=40)  # not the 60 s of the sleeps
    assert proc.returncode != 0
    tests = read_tests(tmp_path / "tests.xml")
    assert tests["counts"]["passed"] == 1 and tests["counts"]["interrupted"] == 2, tests
