"""One config dataclass tree for every entry point.

Precedence: CLI overrides > config file (JSON or YAML) > defaults. The tree is built from
the merged dict in one go, so every section's ``__post_init__`` validates the final values;
``validate_for_world`` then checks what depends on the launch (world size, model depth).
Both run on every rank before any process group or RPC agent starts.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from runtime.split.cut import CUT_DTYPES as CUT_CODEC_DTYPES
from runtime.split.shapes import DEFAULT_SHAPE, SHAPES, get_shape

METHODS = ("cenlora", "splitlora", "fedlora")
CUT_DTYPES = tuple(CUT_CODEC_DTYPES)  # split.cut_dtype values


class ConfigError(ValueError):
    """A config value is invalid; the message names the field."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


PRETRAINED_SIZES = ("micro", "mini")  # presets with a pretrained compact-vocabulary base (launch.pretrain)


@dataclass
class ModelConfig:
    name: str = "tiny"  # preset: micro, mini (compact vocabulary), tiny, gpt2, gpt2-medium, gpt2-large
    path: str | None = None  # local HF directory or cache name with real weights
    # micro/mini without a path: "pretrained" uses (and builds once) their base in the user cache;
    # "random" initialises them at random (as every other preset without a path).
    base: str = "pretrained"
    vocab_map: str | None = None  # vocab_map.json for a random-init model (a model.path's own map wins)
    # The LoRA recipe's GPT-2 has no dropout in the base model; only LoRA dropout.
    dropout: float = 0.0
    # Encoders (a BERT/RoBERTa model.path, data.task=classify): labels of the head (0 = the training
    # split's label count)
    num_labels: int = 0
    pooling: str = "mean"  # encoders: the head's input, mean over real tokens (mean) or the first token (cls)
    # Encoders: train the classification head (its holder's optimizer; clients that hold it average it
    # with FedAvg weights after every aggregation) instead of the paper's frozen random head
    train_head: bool = False

    def __post_init__(self) -> None:
        _check(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")
        _check(self.num_labels >= 0, f"model.num_labels must be >= 0 (0 = from the data), got {self.num_labels}")
        _check(self.pooling in ("mean", "cls"), f"model.pooling must be mean|cls, got {self.pooling!r}")
        _check(self.base in ("pretrained", "random"), f"model.base must be pretrained|random, got {self.base!r}")

    def wants_cached_base(self) -> bool:
        """True when the run must use the cached pretrained base of a micro/mini preset."""
        return self.name in PRETRAINED_SIZES and not self.path and self.base == "pretrained"


@dataclass
class LoRASection:
    r: int = 4  # LoRA rank (r_G, the allocated rank, with fed.client_ranks)
    alpha: float = 32.0  # LoRA scaling is alpha / r
    dropout: float = 0.1  # dropout on the LoRA branch input
    targets: str = "q,v"  # comma list of q, k, v, attn_proj, mlp_fc, mlp_proj
    layers: str = ""  # blocks that get adapters, e.g. "1,2,3" or "1..3" (peft's layers_to_transform); "" = all

    def __post_init__(self) -> None:
        self.layer_list()  # raises ConfigError on a malformed list
        _check(self.r >= 1, f"lora.r must be >= 1, got {self.r}")
        _check(self.alpha > 0, f"lora.alpha must be > 0, got {self.alpha}")
        _check(0.0 <= self.dropout < 1.0, f"lora.dropout must be in [0, 1), got {self.dropout}")

    def layer_list(self) -> tuple[int, ...] | None:
        """The adapted blocks in increasing order; None = every block."""
        if not self.layers.strip():
            return None
        out: set[int] = set()
        for part in (x.strip() for x in self.layers.split(",")):
            lo, sep, hi = part.partition("..")
            try:
                out |= set(range(int(lo), int(hi) + 1)) if sep else {int(part)}
            except ValueError:
                raise ConfigError(f"lora.layers must be block indices like 1,2,3 or 1..3, "
                                  f"got {self.layers!r}") from None
        _check(bool(out) and min(out) >= 0, f"lora.layers must name blocks >= 0, got {self.layers!r}")
        return tuple(sorted(out))


@dataclass
class DataConfig:
    # E2E data root (else $SPLITLORA_DATA, then the user cache); classify: a directory with train.csv and
    # test.csv (text + label columns, e.g. BANKING77), else $SPLITLORA_CLS_DATA
    dir: str | None = None
    source: str = "auto"  # auto (the real data if found, else synthetic), e2e, csv (classify), synthetic
    # finetune: MR -> reference pairs; pretrain: documents made from the training references
    # alone (plain, copied, and rebuilt from shuffled keyword spans; see runtime/data/pretrain_docs.py);
    # classify: text classification with an encoder model.path (runtime/data/classify.py)
    task: str = "finetune"
    seq_len: int = 512  # examples longer than this are truncated
    pad_to_seq_len: bool = False  # True: pad every batch to seq_len (like-for-like with the reference)
    # iid, contiguous, dirichlet:<alpha>[:<attribute>] (classify: over labels), pathological[:<classes>], pairs
    partition: str = "iid"
    max_train_examples: int = 0  # 0 = all; >0 keeps the first k (smoke runs)
    # validation examples for the loss at the end (0 = none); classify: always the whole test split
    max_eval_examples: int = 256

    def __post_init__(self) -> None:
        _check(self.source in ("auto", "e2e", "csv", "synthetic"),
               f"data.source must be auto|e2e|csv|synthetic, got {self.source!r}")
        _check(self.task in ("finetune", "pretrain", "classify"),
               f"data.task must be finetune|pretrain|classify, got {self.task!r}")
        _check((self.source == "e2e" and self.task != "classify") or (self.source == "csv" and self.task == "classify")
               or self.source in ("auto", "synthetic"),
               f"data.source={self.source} does not fit data.task={self.task} (e2e: finetune|pretrain; csv: classify)")
        _check(self.seq_len >= 8, f"data.seq_len must be >= 8, got {self.seq_len}")
        _check(self.max_train_examples >= 0, f"data.max_train_examples must be >= 0, got {self.max_train_examples}")
        _check(self.max_eval_examples >= 0, f"data.max_eval_examples must be >= 0, got {self.max_eval_examples}")
        from runtime.data.partition import parse_scheme

        try:
            parse_scheme(self.partition)
        except ValueError as e:
            raise ConfigError(f"data.partition: {e}") from None


@dataclass
class SplitConfig:
    cut: int = 3  # client holds blocks 0..cut-1 (SplitLoRA's public code cuts after block 3)
    cut_dtype: str = "fp32"  # dtype of the activations/gradients that cross the cut
    client_cuts: str = ""  # per-client cuts, e.g. "2,3,6" (heterogeneous clients); "" = `cut` for all
    # vanilla: the server holds blocks cut.. + ln_f + head and computes the loss (the client sends targets);
    # u: the client also holds the end (blocks head_cut.., ln_f, head, loss); only hidden states cross
    shape: str = DEFAULT_SHAPE  # a registered split shape (runtime/split/shapes/)
    head_cut: int = 0  # u: first block of the client's back end; 0 = n_layer (back end = ln_f + head only)
    # Batched serving (runtime/split/batching.py): one server forward/backward/update over every
    # waiting client's activations; off = one client at a time, one server update per client step
    server_batching: bool = False
    batch_window_ms: float = 20.0  # arrival order: a batch closes this long after its first request at the latest
    max_batch_clients: int = 0  # most clients in one batch; 0 = no cap

    def cuts(self, n_clients: int) -> list[int]:
        """The cut of every client (index 0 = rank 1)."""
        given = [int(x) for x in self.client_cuts.split(",") if x.strip()]
        return given or [self.cut] * n_clients

    def __post_init__(self) -> None:
        _check(self.cut_dtype in CUT_DTYPES, f"split.cut_dtype must be one of {CUT_DTYPES}, got {self.cut_dtype!r}")
        _check(self.cut >= 0, f"split.cut must be >= 0, got {self.cut}")
        try:
            shape = get_shape(self.shape)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        _check(self.head_cut >= 0, f"split.head_cut must be >= 0 (0 = n_layer), got {self.head_cut}")
        uses = [n for n, s in SHAPES.items() if s.uses_head_cut]
        _check(shape.uses_head_cut or self.head_cut == 0,
               f"split.head_cut applies to split.shape={'|'.join(uses)} only")
        _check(self.batch_window_ms >= 0, f"split.batch_window_ms must be >= 0, got {self.batch_window_ms}")
        _check(self.max_batch_clients >= 0, f"split.max_batch_clients must be >= 0 (0 = no cap), "
                                            f"got {self.max_batch_clients}")
        batched = [n for n, s in SHAPES.items() if s.batched_serving]
        _check(not self.server_batching or shape.batched_serving,
               f"split.server_batching supports split.shape={'|'.join(batched)} only (split.shape={self.shape} "
               "is served one client at a time)")
        try:
            self.cuts(1)
        except ValueError:
            raise ConfigError(f"split.client_cuts must be a comma list of ints, got {self.client_cuts!r}") from None
        _check(not self.server_batching or len(set(self.cuts(1))) <= 1,
               f"split.server_batching needs one cut for every client (split.client_cuts={self.client_cuts!r}): "
               f"a batch runs one forward from one block")


@dataclass
class TrainConfig:
    finetune: str = "lora"  # lora: only adapters train; full: every weight trains (no LoRA)
    batch_size: int = 8  # per client
    max_steps: int = 40  # local steps per client; 0 = run `epochs` full epochs
    epochs: int = 1  # passes over the data when max_steps = 0
    lr: float = 5e-3  # smoke-run default for the random tiny model; the E2E recipe uses 2e-4
    warmup_steps: int = 5  # the E2E recipe: 500
    weight_decay: float = 0.01  # AdamW (decoupled) weight decay
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.999  # AdamW beta2
    eps: float = 1e-6  # AdamW epsilon
    label_smoothing: float = 0.1  # loss = (1 - eps) NLL + eps mean(-log p over the vocabulary)
    grad_clip: float = 0.0  # 0 = none (the reference recipe clips nothing)
    seed: int = 110  # model init, data order, partitions and synthetic data

    def __post_init__(self) -> None:
        _check(self.finetune in ("lora", "full"), f"train.finetune must be lora|full, got {self.finetune!r}")
        _check(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        _check(self.max_steps >= 0, f"train.max_steps must be >= 0, got {self.max_steps}")
        _check(self.epochs >= 1, f"train.epochs must be >= 1, got {self.epochs}")
        _check(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _check(self.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(0 <= self.label_smoothing < 1, f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        _check(self.grad_clip >= 0, f"train.grad_clip must be >= 0, got {self.grad_clip}")


@dataclass
class FedConfig:
    aggregate_every: int = 10  # local client steps between client-side aggregations
    strategy: str = "fedavg"  # see runtime/strategies/__init__.py (fedavg, ffa, lora-a2, flora, fedex, ...)
    weighting: str = "samples"  # samples (|D_k| / sum |D|) or uniform
    client_ranks: str = ""  # per-client rank budgets r_k, e.g. "1,2,4"; "" = lora.r for all
    lr_b_ratio: float = 5.0  # LoRA-A2: lr_B = ratio * lr_A (LoRA+)
    probe_steps: int = 5  # LoRA-A2: local steps of the rank-selection probe
    on_client_failure: str = "abort"  # abort: every rank exits non-zero; continue: finish without it
    # Client optimizers' lr = train.lr x this (the server keeps train.lr). FedAvg over N clients that each
    # take 1/N of the steps moves an adapter about 1/N as far as one process on all the data.
    client_lr_scale: float = 1.0
    # Logical clients (docs/clients.md): many clients per client rank, and client sampling.
    num_clients: int = 0  # N logical clients, round robin over the client ranks (0 = one per client rank)
    clients_per_round: int = 0  # K clients sampled (seeded) each round (0 = all N: full participation)

    def __post_init__(self) -> None:
        _check(self.num_clients >= 0, f"fed.num_clients must be >= 0 (0: one per client rank), got {self.num_clients}")
        _check(self.clients_per_round >= 0,
               f"fed.clients_per_round must be >= 0 (0: every client), got {self.clients_per_round}")
        _check(self.aggregate_every >= 1, f"fed.aggregate_every must be >= 1, got {self.aggregate_every}")
        _check(self.client_lr_scale > 0, f"fed.client_lr_scale must be > 0, got {self.client_lr_scale}")
        _check(self.weighting in ("samples", "uniform"),
               f"fed.weighting must be samples|uniform, got {self.weighting!r}")
        from runtime.strategies import STRATEGIES

        _check(self.strategy in STRATEGIES,
               f"fed.strategy unknown: {self.strategy!r} (known: {', '.join(sorted(STRATEGIES))})")
        _check(self.lr_b_ratio > 0, f"fed.lr_b_ratio must be > 0, got {self.lr_b_ratio}")
        _check(self.probe_steps >= 1, f"fed.probe_steps must be >= 1, got {self.probe_steps}")
        _check(self.on_client_failure in ("abort", "continue"),
               f"fed.on_client_failure must be abort|continue, got {self.on_client_failure!r}")
        try:
            ranks = self.rank_list()
        except ValueError:
            raise ConfigError(f"fed.client_ranks must be a comma list of ints, got {self.client_ranks!r}") from None
        _check(all(r >= 1 for r in ranks), f"fed.client_ranks must all be >= 1, got {self.client_ranks!r}")

    def rank_list(self) -> list[int]:
        return [int(x) for x in self.client_ranks.split(",") if x.strip()]


@dataclass
class RuntimeConfig:
    device: str = "auto"  # auto (cuda if available), cpu, cuda
    order: str = "arrival"  # server applies client steps in arrival order, or round_robin (reproducible)
    rpc_timeout: float = 120.0  # seconds; also bounds rpc.shutdown and collectives
    rpc_threads: int = 0  # TensorPipe worker threads; 0 = max(16, 2 * clients + 8)
    transport: str = "auto"  # auto (uv on CPU: shm busy-polls), uv, shm
    rpc_channels: str = "auto"  # auto (same-host peers share memory), basic (tensor bytes go through the transport)
    cuda_cut: str = "host"  # host: cut tensors staged through CPU (works with dist autograd); device_maps
    client_backend: str = "auto"  # client group: auto (NCCL if each client has a GPU of its own), nccl, gloo
    server_threads: int = 0  # torch threads on the server; 0 = cores left by waiting clients
    client_threads: int = 1  # torch threads on each client
    # Simulated heterogeneous clients: per-client slow-down factors ("1,1,3": client 3 takes
    # 3x its measured compute time; the extra is slept and logged as time.straggler_sleep).
    client_slowdown: str = ""

    def slowdowns(self, n_clients: int) -> list[float]:
        given = [float(x) for x in self.client_slowdown.split(",") if x.strip()]
        return given or [1.0] * n_clients

    def __post_init__(self) -> None:
        _check(self.device in ("auto", "cpu", "cuda"), f"runtime.device must be auto|cpu|cuda, got {self.device!r}")
        _check(self.order in ("arrival", "round_robin"),
               f"runtime.order must be arrival|round_robin, got {self.order!r}")
        _check(self.rpc_timeout > 0, f"runtime.rpc_timeout must be > 0, got {self.rpc_timeout}")
        _check(self.rpc_threads >= 0, f"runtime.rpc_threads must be >= 0, got {self.rpc_threads}")
        _check(self.rpc_channels in ("auto", "basic"),
               f"runtime.rpc_channels must be auto|basic, got {self.rpc_channels!r}")
        _check(self.transport in ("auto", "uv", "shm"),
               f"runtime.transport must be auto|uv|shm, got {self.transport!r}")
        _check(self.cuda_cut in ("host", "device_maps"),
               f"runtime.cuda_cut must be host|device_maps, got {self.cuda_cut!r}")
        _check(self.client_backend in ("auto", "nccl", "gloo")
               and (self.client_backend, self.device) != ("nccl", "cpu"),
               f"runtime.client_backend must be auto|nccl|gloo (nccl needs CUDA), got {self.client_backend!r}")
        _check(self.server_threads >= 0 and self.client_threads >= 0, "runtime.*_threads must be >= 0")
        try:
            factors = self.slowdowns(1)
        except ValueError:
            raise ConfigError(f"runtime.client_slowdown must be a comma list of numbers, got "
                              f"{self.client_slowdown!r}") from None
        _check(all(f >= 1.0 for f in factors), f"runtime.client_slowdown factors must be >= 1, got "
                                                f"{self.client_slowdown!r}")


@dataclass
class EvalConfig:
    at_end: bool = False  # decode + score once training ends (on the first client / cenlora)
    split: str = "test"  # E2E split decoded and scored: train, valid, test
    refs_style: str = "raw"  # raw: official references; tokenized: the context||completion files' refs
    num_beams: int = 10  # beam width (1 = greedy)
    length_penalty: float = 0.8  # hypothesis score = sum log p / length ** this
    no_repeat_ngram_size: int = 4  # ban repeating n-grams of this size (0 = off)
    # what the n-gram ban sees: generated = the output only (the recipe's reference decoder), sequence = prompt too
    repeat_scope: str = "generated"
    max_new_tokens: int = 64  # longest generated completion
    batch_size: int = 16  # MRs decoded together
    max_mrs: int = 0  # 0 = every MR of the split
    meteor: bool = True  # score METEOR too (needs Java)
    samples: int = 0  # at the end, decode (greedy) and print this many validation MRs' texts
    # every this many local steps (after that step's aggregation): a classifier's test accuracy /
    # macro-F1 ("test" in metrics.jsonl), a language model's validation loss ("val"; SplitLoRA: through
    # the split, training paused meanwhile); 0 = at the end only
    every: int = 0
    # splitlora: the first client assembles the whole model (its part + the server's adapters) for the
    # validation loss and the scores; default: both run through the split, each party on its own part
    whole_model: bool = False
    # splitlora, eval.at_end: every live client rank decodes a share of the MRs through the split at once
    # (the server batches their steps under split.server_batching) and the first scores; false: the first
    # client decodes them all
    share_decoding: bool = True

    def __post_init__(self) -> None:
        _check(self.split in ("train", "valid", "test"), f"eval.split must be train|valid|test, got {self.split!r}")
        _check(self.refs_style in ("raw", "tokenized"),
               f"eval.refs_style must be raw|tokenized, got {self.refs_style!r}")
        _check(self.num_beams >= 1, f"eval.num_beams must be >= 1, got {self.num_beams}")
        _check(self.max_new_tokens >= 1, f"eval.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        _check(self.batch_size >= 1, f"eval.batch_size must be >= 1, got {self.batch_size}")
        _check(self.max_mrs >= 0, f"eval.max_mrs must be >= 0, got {self.max_mrs}")
        _check(self.samples >= 0, f"eval.samples must be >= 0, got {self.samples}")
        _check(self.every >= 0, f"eval.every must be >= 0, got {self.every}")
        _check(self.no_repeat_ngram_size >= 0, "eval.no_repeat_ngram_size must be >= 0")
        _check(self.repeat_scope in ("generated", "sequence"),
               f"eval.repeat_scope must be generated|sequence, got {self.repeat_scope!r}")


@dataclass
class CheckpointConfig:
    every: int = 0  # local steps between checkpoints (0 = only at the end); the end is always saved

    def __post_init__(self) -> None:
        _check(self.every >= 0, f"ckpt.every must be >= 0, got {self.every}")


@dataclass
class OutputConfig:
    dir: str = "runs"  # where run directories are created
    name: str = ""  # run directory name; empty = <method>-<timestamp>
    save_model: bool = True  # write model/ (trained weights, peft layout) at the end
    tensorboard: bool = True  # also write TensorBoard event files beside metrics.jsonl (if tensorboard is installed)

    def __post_init__(self) -> None:
        _check("/" not in self.name, f"out.name must be a plain name, got {self.name!r}")


@dataclass
class Config:
    method: str = "splitlora"  # cenlora (1 process), splitlora (server + clients), fedlora
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoRASection = field(default_factory=LoRASection)
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fed: FedConfig = field(default_factory=FedConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ckpt: CheckpointConfig = field(default_factory=CheckpointConfig)
    out: OutputConfig = field(default_factory=OutputConfig)
    resume: str = ""  # a run directory to continue from its latest complete checkpoint

    def __post_init__(self) -> None:
        _check(self.method in METHODS, f"method must be one of {METHODS}, got {self.method!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)
