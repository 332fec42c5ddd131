"""Logical clients under torchrun (gloo, tiny preset, synthetic data): the same clients on any
number of ranks give the same run (FedLoRA; SplitLoRA, vanilla split, round-robin order);
sampled rounds train exactly the drawn clients, count every byte per client and resume bit
for bit (docs/clients.md)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from safetensors.torch import load_file

from runtime.fed.population import Population
from tests.torchrun_util import Run, torchrun

pytestmark = pytest.mark.slow

BUDGETS = "2,4,1,3"
EQUIV = ["--fed.strategy=lora-a2", "--runtime.order=round_robin", "--lora.r=4", f"--fed.client_ranks={BUDGETS}",
         "--fed.num_clients=4", "--fed.probe_steps=2", "--train.max_steps=4", "--fed.aggregate_every=2"]
SAMPLED = ["--method=fedlora", "--fed.strategy=lora-a2", "--lora.r=4", "--fed.client_ranks=2,4,1,3,4,2",
           "--fed.num_clients=6", "--fed.clients_per_round=2", "--fed.probe_steps=2", "--train.max_steps=8",
           "--fed.aggregate_every=2", "--ckpt.every=3", "--train.seed=5"]


def _adapters(run: Run) -> dict[str, torch.Tensor]:
    return load_file(str(run.run_dir / "model/lora.safetensors"))


def _losses(run: Run) -> dict[tuple[int, int], float]:
    return {(r["client"], r["step"]): r["loss"] for r in run.metrics() if r.get("kind") == "step"}


# The reference layouts (one rank per client) and the default comparisons, built two at a time;
# FedLoRA on 2 ranks (between the two ends) runs with the heavy cases only.
LAYOUTS = [("fedlora", 4), ("fedlora", 1), ("splitlora", 4), ("splitlora", 2)]


def _layout(out, method: str, ranks: int) -> Run:
    return torchrun(ranks + 1, [f"--method={method}", *EQUIV], out, f"{method}-{ranks}", timeout=300)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[tuple[str, int], Run]:
    """The same 4 clients on 4 and 1 client ranks (SplitLoRA: 4 and 2)."""
    out = tmp_path_factory.mktemp("logical")
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(LAYOUTS, pool.map(lambda m: _layout(out, *m), LAYOUTS)))


@pytest.mark.parametrize("method, ranks", [pytest.param("fedlora", 2, marks=pytest.mark.heavy), ("fedlora", 1),
                                           ("splitlora", 2)])
def test_the_same_clients_on_fewer_ranks_give_the_same_run(layouts, tmp_path, method, ranks):
    ref = layouts[(method, 4)]
    run = layouts.get((method, ranks)) or _layout(tmp_path, method, ranks)
    assert ref.rc == 0, ref.stderr[-3000:]
    assert run.rc == 0, run.stderr[-3000:]
    a, b = _adapters(ref), _adapters(run)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0, msg=k)
    la, lb = _losses(ref), _losses(run)
    assert la.keys() == lb.keys() and len(la) == 4 * 4
    assert max(abs(la[k] - lb[k]) / abs(la[k]) for k in la) <= 1e-6  # a loss near 10.8: 1e-6 is a few ulps
    s = run.summary()
    assert s["n_clients"] == 4 and s["client_ranks"] == ranks
    assert [c["rank_budget"] for c in s["logical_clients"].values()] == [2, 4, 1, 3]
    assert s["logical_clients"] == ref.summary()["logical_clients"]  # the same steps, rounds and bytes per client
    if method == "splitlora":
        assert s["server"]["updates"] == ref.summary()["server"]["updates"] == 4 * 4
        assert all(c["bytes_up"] > 0 for c in s["logical_clients"].values())


@pytest.fixture(scope="module")
def sampled(tmp_path_factory) -> tuple[Run, Run]:
    """6 clients on 2 ranks, 2 per round, uninterrupted and interrupted mid-round (step 5), then resumed."""
    out = tmp_path_factory.mktemp("sampled")
    with ThreadPoolExecutor(max_workers=2) as pool:
        full, cut = pool.map(lambda a: torchrun(3, SAMPLED, out, a[0], timeout=300, env=a[1]),
                             [("full", None), ("cut", {"SPLITLORA_INJECT_FAULT": "raise:1:5"})])
    assert cut.rc != 0
    resumed = torchrun(3, [f"--resume={cut.run_dir}"], out, "ignored", timeout=300)
    assert resumed.rc == 0, resumed.stderr[-3000:]
    return full, cut


def test_sampled_rounds_train_the_drawn_clients_and_count_their_bytes(sampled):
    full, _ = sampled
    assert full.rc == 0, full.stderr[-3000:]
    records, s = full.metrics(), full.summary()
    pop = Population(6, 2, 2, seed=5)
    for t in range(1, 5):
        steps = {r["client"] for r in records if r.get("kind") == "step" and r["round"] == t}
        aggs = [r for r in records if r.get("kind") == "aggregate" and r["round"] == t]
        drawn = {k + 1 for k in pop.sample(t)}
        assert steps == drawn and {a["client"] for a in aggs} == drawn and len(aggs) == 2
    clients = s["logical_clients"]
    assert sum(c["rounds"] for c in clients.values()) == 2 * 4
    for cid, c in clients.items():
        mine = [r for r in records if r.get("kind") == "aggregate" and r["client"] == int(cid)]
        assert c["rounds"] == len(mine) and c["steps"] == 2 * len(mine)
        assert c["comm"]["up_bytes"] == sum(a["up_bytes"] for a in mine)
    assert sum(c["comm"]["up_bytes"] for c in clients.values()) == sum(
        r["up_bytes"] for r in records if r.get("kind") == "aggregate")
    assert s["clients_per_round"] == 2 and s["n_clients"] == 6


def test_sampled_run_resumes_mid_round_bitwise(sampled):
    full, cut = sampled
    a, b = _adapters(full), _adapters(cut)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
