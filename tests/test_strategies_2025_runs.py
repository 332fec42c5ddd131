"""The 2025 strategies in real multi-process runs (torchrun, gloo, tiny preset, CPU, synthetic data).

Every strategy runs under FedLoRA and SplitLoRA: 2 clients + server, 6 local steps,
aggregation every 2 (3 rounds), checkpoints every 3 steps, server order round_robin. One run
of each strategy is resumed from its step-3 checkpoint (mid-round: fedex's changed base,
rolora's A-round, frlora's changed base and principal factors, fedsa's own B per client)
and must end bitwise equal. Each run's model/ must give the validation loss the run reported
for its in-memory model. The runs go two at a time. By default the four resumed runs (one per
strategy, both methods among them); the other four with the heavy cases (-m "heavy or not heavy").
"""

from __future__ import annotations

import json
import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from runtime.build import build_full_model
from runtime.config import Config
from runtime.config.parse import config_from_dict
from runtime.evaluation import load_trained_model
from runtime.inputs import load_client_data
from runtime.io.checkpoint import load_rank, mark_latest
from runtime.roles.common import eval_loss
from tests.torchrun_util import Run, torchrun

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # the first test builds 8 runs in its set-up

STRATEGIES = ("fedex", "fedsa", "rolora", "frlora")
CHANGE_BASE = ("fedex", "frlora")  # modifies_base
# One run of each base-changing strategy starts from a --model.path base: only then does the
# export carry a base because the strategy changed it (a random base is always saved). The
# micro base already fits the synthetic data, so those runs check the loss stays, not falls.
FROM_PATH = [("fedex", "splitlora"), ("frlora", "fedlora")]
CASES = [(s, m) for s in STRATEGIES for m in ("fedlora", "splitlora")]
RESUMED = [("fedex", "splitlora"), ("rolora", "splitlora"), ("frlora", "fedlora"), ("fedsa", "fedlora")]
HEAVY = pytest.mark.heavy  # the cases no resume test needs
CASE_PARAMS = [c if c in RESUMED else pytest.param(*c, marks=HEAVY) for c in CASES]
STEPS, EVERY, R = 6, 2, 4
ARGS = [f"--train.max_steps={STEPS}", f"--fed.aggregate_every={EVERY}", f"--lora.r={R}", "--ckpt.every=3",
        "--runtime.order=round_robin", "--lora.dropout=0"]


def _resume(full: Run, out: Path, name: str) -> Path:
    """A copy of ``full`` cut back to its step-3 checkpoint, resumed to the end."""
    cut = out / f"{name}-cut"
    shutil.copytree(full.run_dir, cut)
    shutil.rmtree(cut / "model")
    mark_latest(cut, 3)
    resumed = torchrun(3, [f"--resume={cut}"], out, f"{name}-ignored", timeout=240)
    assert resumed.rc == 0 and "resuming" in resumed.stderr, resumed.stderr[-3000:]
    return cut


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("strategy_2025_runs")


def _selected(request: pytest.FixtureRequest) -> list[tuple[str, str]]:
    """The cases the selected tests of this module use: deselected heavy ones are not run."""
    wanted = set()
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if getattr(item, "module", None) is not None and item.module.__name__ == __name__ and "method" in params:
            wanted.add((params.get("strategy", "fedsa"), params["method"]))  # no strategy: the fedsa test
    return [c for c in CASES if c in wanted]


@pytest.fixture(scope="module")
def runs(request, out, pretrained_base) -> dict[tuple[str, str], Run]:
    def one(case: tuple[str, str]) -> Run:
        strategy, method = case
        base = [f"--model.path={pretrained_base}"] if case in FROM_PATH else []
        return torchrun(3, [f"--method={method}", f"--fed.strategy={strategy}", *ARGS, *base], out,
                        f"{strategy}-{method}", timeout=240)

    cases = _selected(request)
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(cases, pool.map(one, cases)))


@pytest.fixture(scope="module")
def resumed(runs, out) -> dict[tuple[str, str], Path]:
    """The run directories of RESUMED, cut back to step 3 and resumed."""
    for case in RESUMED:
        assert runs[case].rc == 0, runs[case].stderr[-3000:]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(RESUMED, pool.map(lambda c: _resume(runs[c], out, "-".join(c)), RESUMED)))


def _cfg(run_dir: Path) -> Config:
    saved = json.loads((run_dir / "config.json").read_text())
    return config_from_dict({k: v for k, v in saved.items() if k != "launch"})


def _bytes_per_round(strategy: str, cfg: Config, model: torch.nn.Module) -> tuple[int, int]:
    """(up, down) fp32 bytes of one client in one round, from the strategy's protocol."""
    blocks = cfg.split.cut if cfg.method == "splitlora" else len(model.transformer["h"])
    n, d = 2 * blocks, model.transformer["wte"].weight.shape[1]  # (q, v) per client-side block; n_embd
    factors, dense, one = n * R * (d + d), n * d * d, n * R * d  # A and B; a dense (out, in); A or B
    up, down = {"fedex": (factors, factors + dense), "fedsa": (one, one), "rolora": (one, one),
                "frlora": (factors, dense)}[strategy]
    return 4 * up, 4 * down


@pytest.mark.parametrize("strategy, method", CASE_PARAMS)
def test_run_trains_accounts_and_exports_the_trained_model(runs, strategy, method):
    run = runs[(strategy, method)]
    assert run.rc == 0, run.stderr[-3000:]
    s = run.summary()
    assert s["method"] == method and math.isfinite(s["val_loss"])
    cfg = _cfg(run.run_dir)
    fresh = build_full_model(cfg)
    up, down = _bytes_per_round(strategy, cfg, fresh)
    records = run.metrics()
    for client in (1, 2):
        losses = [r["loss"] for r in records if r.get("kind") == "step" and r["client"] == client]
        assert len(losses) == STEPS
        if (strategy, method) not in FROM_PATH:  # the loss goes down: second half against first half
            # (FRLoRA's restarts every 2 steps with fresh Adam state make single steps noisy)
            assert sum(losses[3:]) / 3 < sum(losses[:3]) / 3 - 0.01, (client, losses)
        aggs = [r for r in records if r.get("kind") == "aggregate" and r["client"] == client]
        assert [a["round"] for a in aggs] == [1, 2, 3] and all(a["strategy"] == strategy for a in aggs)
        assert all(a["up_bytes"] == up and a["down_bytes"] == down for a in aggs), aggs
        assert s["clients"][str(client)]["comm"]["up_bytes"] == 3 * up == aggs[-1]["cum_up_bytes"]
    # model/ is the trained model: the same validation loss as the in-memory one the run scored.
    exported = load_trained_model(cfg, run.run_dir)
    batches = load_client_data(cfg, 0, 2).eval_batches()
    assert eval_loss(exported, batches, torch.device("cpu")) == pytest.approx(s["val_loss"], rel=1e-6, abs=1e-6)
    if (strategy, method) in FROM_PATH:  # a merge gone wrong (e.g. W0's principal part twice) would show here
        assert abs(s["val_loss"] - eval_loss(fresh, batches, torch.device("cpu"))) < 0.05
    base = load_file(str(run.run_dir / "model/base.safetensors"))  # with --model.path: saved as changed
    changed = [k for k, v in fresh.state_dict().items() if k in base and not torch.equal(base[k], v)]
    if strategy in CHANGE_BASE:
        assert changed and all(".attn.c_attn.weight" in k for k in changed), changed  # only the adapted weights
        adapter = json.loads((run.run_dir / "model/adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == str((run.run_dir / "model").resolve())  # not the old base
    else:
        assert not changed


@pytest.mark.parametrize("strategy, method", RESUMED)
def test_resume_from_a_mid_round_checkpoint_is_bitwise(runs, resumed, strategy, method):
    run, cut = runs[(strategy, method)], resumed[(strategy, method)]
    for name in ("lora.safetensors", "base.safetensors"):
        a, b = load_file(str(run.run_dir / "model" / name)), load_file(str(cut / "model" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.parametrize("method", ["fedlora", pytest.param("splitlora", marks=HEAVY)])
def test_fedsa_reports_client_1s_b_with_the_shared_a(runs, method):
    run = runs[("fedsa", method)]
    exported = load_file(str(run.run_dir / "model/lora.safetensors"))
    c1, c2 = (load_rank(run.run_dir, STEPS, f"client{c}")["clients"][0]["lora"] for c in (1, 2))
    for k, v in c1.items():
        assert torch.equal(exported[k], v), k  # client 1's adapters, as they are
        if k.endswith("lora_A"):
            assert torch.equal(v, c2[k])  # A is shared after the last round
        else:
            assert not torch.equal(v, c2[k])  # B is each client's own


@pytest.mark.parametrize("strategy, method", FROM_PATH)
def test_a_changed_base_export_loads_in_peft(runs, strategy, method):
    pytest.importorskip("peft")
    from tests.test_peft_export import _auto_peft_equals_ours

    _auto_peft_equals_ours(runs[(strategy, method)].run_dir)  # adapter + the changed base in model/
