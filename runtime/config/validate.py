"""Checks that depend on the launch (the number of processes, the model's depth) and the
logical-client population: run before any process group starts (``launch/train.py``)."""

from __future__ import annotations

from runtime.config.schema import Config, _check
from runtime.split.shapes import get_shape


def validate_for_world(cfg: Config, world_size: int, n_layer: int) -> None:
    """Checks that depend on the launch: process count and model depth.

    cenlora runs in one process; splitlora and fedlora need a server (rank 0) plus at
    least one client. The cut must leave the server at least one block.
    """
    if cfg.method == "cenlora":
        _check(world_size == 1, f"method cenlora runs in one process; got WORLD_SIZE={world_size} "
                                "(use --nproc_per_node=1)")
    else:
        _check(world_size >= 2, f"method {cfg.method} needs a server (rank 0) and at least one client: "
                                f"WORLD_SIZE must be >= 2, got {world_size} (use --nproc_per_node=N+1 for N clients)")
    n_clients = _check_population(cfg, world_size)
    if cfg.runtime.client_slowdown:
        _check(len(cfg.runtime.slowdowns(1)) == n_clients,
               f"runtime.client_slowdown gives {len(cfg.runtime.slowdowns(1))} factor(s) but there are "
               f"{n_clients} clients")
    _check(cfg.method != "cenlora" or cfg.fed.client_lr_scale == 1.0,
           "fed.client_lr_scale applies to the clients of splitlora/fedlora; cenlora has none")
    ranks = cfg.fed.rank_list()
    if ranks:
        _check(cfg.method != "cenlora", "fed.client_ranks applies to splitlora/fedlora, not cenlora")
        _check(len(ranks) == n_clients,
               f"fed.client_ranks gives {len(ranks)} rank(s) but there are {n_clients} clients")
        _check(max(ranks) <= cfg.lora.r, f"fed.client_ranks: every r_k must be <= r_G = lora.r = {cfg.lora.r}, "
                                         f"got {cfg.fed.client_ranks}")
    if cfg.train.finetune == "full":
        _check(cfg.method in ("cenlora", "fedlora"),
               "train.finetune=full runs with method cenlora or fedlora (a split server's LM head is tied to a "
               "frozen copy of the client's embedding)")
        _check(cfg.fed.strategy == "fedavg", "train.finetune=full aggregates with fed.strategy=fedavg (FedAvg of "
                                            f"full weights); {cfg.fed.strategy!r} is a LoRA method")
        _check(not ranks, "fed.client_ranks needs LoRA (train.finetune=lora)")
    if cfg.method == "splitlora":
        _check(1 <= cfg.split.cut <= n_layer - 1,
               f"split.cut must be in [1, {n_layer - 1}] for a {n_layer}-block model "
               f"(client holds blocks 0..cut-1, server the rest), got {cfg.split.cut}")
        for problem in get_shape(cfg.split.shape).problems(n_layer, cfg.split.cut, cfg.split.head_cut,
                                                           bool(cfg.split.client_cuts)):
            _check(False, problem)
        if cfg.split.client_cuts:
            cuts = cfg.split.cuts(world_size - 1)
            _check(len(cuts) == world_size - 1,
                   f"split.client_cuts gives {len(cuts)} cut(s) but there are {world_size - 1} clients")
            _check(all(1 <= c <= n_layer - 1 for c in cuts),
                   f"split.client_cuts must all be in [1, {n_layer - 1}], got {cfg.split.client_cuts}")
            _check(cfg.fed.strategy == "fedavg",
                   "split.client_cuts (per-client cuts) is implemented for fed.strategy=fedavg only")
    _check_lora_layers(cfg, world_size, n_layer)
    _check_eval_every(cfg)
    _check_classify(cfg)


def n_logical_clients(cfg: Config, world_size: int) -> int:
    """N: ``fed.num_clients``, or one client per client rank."""
    return cfg.fed.num_clients or max(world_size - 1, 1)


def _check_population(cfg: Config, world_size: int) -> int:
    """Logical clients and sampling; returns N."""
    f, n_ranks = cfg.fed, world_size - 1
    n = n_logical_clients(cfg, world_size)
    if cfg.method == "cenlora":
        _check(not f.num_clients and not f.clients_per_round,
               "fed.num_clients / fed.clients_per_round apply to splitlora/fedlora, not cenlora")
        return n
    _check(n >= n_ranks, f"fed.num_clients={n} is fewer than the {n_ranks} client ranks: every client rank "
                         "hosts at least one client")
    _check(f.clients_per_round <= n, f"fed.clients_per_round={f.clients_per_round} is more than the {n} clients "
                                     "(fed.num_clients)")
    hosted, sampled = n > n_ranks, 0 < f.clients_per_round < n
    if not hosted and not sampled:
        return n
    if cfg.method == "splitlora":
        _check(not cfg.split.client_cuts, "split.client_cuts gives one cut per client rank; it does not combine "
                                          "with several clients per rank or client sampling")
        _check(cfg.runtime.order == "arrival" or (not sampled and n % n_ranks == 0),
               f"runtime.order=round_robin admits the client ranks in turn, so every rank must run as many client "
               f"steps as the others: full participation and fed.num_clients ({n}) a multiple of the {n_ranks} client "
               "ranks; or use runtime.order=arrival")
    from runtime.strategies import STRATEGIES

    _check(not STRATEGIES[f.strategy].modifies_base,
           f"fed.strategy={f.strategy} merges every round into the base weights, which the clients of a rank share "
           "and a sampled-out client would miss: it needs one client rank per client and full participation")
    _check(cfg.fed.on_client_failure == "abort" or not sampled,
           "fed.on_client_failure=continue is not supported with client sampling (fed.clients_per_round)")
    return n


def _check_eval_every(cfg: Config) -> None:
    """eval.every: fine-tuning only, on the aggregated model, with something to evaluate."""
    if not cfg.eval.every:
        return
    _check(cfg.data.task != "pretrain", "eval.every applies to fine-tuning (data.task=finetune|classify)")
    _check(cfg.method == "cenlora" or cfg.eval.every % cfg.fed.aggregate_every == 0,
           f"eval.every ({cfg.eval.every}) must be a multiple of fed.aggregate_every "
           f"({cfg.fed.aggregate_every}): the model evaluated is the aggregated one")
    _check(cfg.data.task == "classify" or cfg.data.max_eval_examples > 0,
           "eval.every records the validation loss: data.max_eval_examples must be > 0")


def _check_classify(cfg: Config) -> None:
    """What a classification run refuses before it starts (the model's architecture is checked in
    runtime.build.check_model_fits_task)."""
    if cfg.data.task != "classify":
        _check(not cfg.model.train_head, "model.train_head applies to an encoder's classification head "
                                         "(data.task=classify)")
        return
    _check(not cfg.eval.at_end and not cfg.eval.samples,
           "eval.at_end / eval.samples decode E2E texts; a classifier is scored on the test split at the end anyway")
    _check(cfg.train.finetune == "lora", "data.task=classify fine-tunes LoRA adapters (train.finetune=lora)")
    if cfg.eval.every:
        _check(cfg.method != "splitlora", "eval.every for a classifier needs the whole model on one rank: "
                                          "cenlora or fedlora (a SplitLoRA client holds only its part)")


def _check_lora_layers(cfg: Config, world_size: int, n_layer: int) -> None:
    """lora.layers must exist in the model and leave every training party an adapter (an
    optimizer over nothing, an aggregation of nothing)."""
    layers = cfg.lora.layer_list()
    if layers is None or cfg.train.finetune == "full":
        return
    _check(max(layers) < n_layer, f"lora.layers names block {max(layers)}; the model has blocks 0..{n_layer - 1}")
    if cfg.method != "splitlora":
        return  # cenlora/fedlora: one whole model per process
    shape = get_shape(cfg.split.shape)
    for cut in sorted(set(cfg.split.cuts(world_size - 1))):
        served = shape.server_blocks(n_layer, cut, cfg.split.head_cut)
        client = [i for i in layers if i not in served]
        server = [i for i in layers if i in served]
        head = served.stop
        back = f" and {head}..{n_layer - 1}" if head < n_layer else ""
        _check(bool(client), f"lora.layers={cfg.lora.layers!r} leaves the clients with cut {cut} no adapter "
                             f"(they hold blocks 0..{cut - 1}{back})")
        _check(bool(server), f"lora.layers={cfg.lora.layers!r} leaves the server no adapter for cut {cut} "
                             f"(it holds blocks {cut}..{head - 1})")
