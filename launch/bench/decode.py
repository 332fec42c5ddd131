"""Beam-search decoding speed: ``models.generate.beam_search`` vs transformers ``generate``.

    python -m launch.bench.decode                      # tiny preset, 8 prompts, beam 10
    python -m launch.bench.decode --model gpt2 --prompts 4
    python -m launch.bench.decode --model gpt2 --threads 2 --repeats 3

Both decode the same random weights (ours written into a transformers
``GPT2LMHeadModel``) and the same batch of E2E-like prompts: random context tokens,
30-40 of them, then 50256, as the recipe's ``context + [50256]``. Settings are the
recipe's (microsoft/LoRA examples/NLG): beam 10, length penalty 0.8, no-repeat-ngram 4, stop tokens
{50256, 628}, 64 new tokens. transformers gets the batch left-padded with an attention
mask. tokens/s counts the tokens of the returned continuations (stop token included)
over the wall time of the whole call; each side is timed after one warm-up call, best
of ``--repeats``. The outputs of the two are compared prompt by prompt.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from models.generate import DecodeConfig, beam_search
from models.gpt2 import GPT2, build_config

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def to_transformers(model: GPT2) -> torch.nn.Module:
    """A transformers ``GPT2LMHeadModel`` (eval) holding exactly ``model``'s weights."""
    import transformers

    c = model.config
    hf_cfg = transformers.GPT2Config(
        vocab_size=c.vocab_size,
        n_positions=c.n_positions,
        n_embd=c.n_embd,
        n_layer=c.n_layer,
        n_head=c.n_head,
        layer_norm_epsilon=c.layer_norm_epsilon,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    hf = transformers.GPT2LMHeadModel(hf_cfg)
    # Ours keeps nn.Linear (out, in); transformers' Conv1D stores (in, out).
    state = {k: (v.t() if k.endswith(_CONV1D) else v) for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith(("attn.bias", "attn.masked_bias")) for k in missing):
        raise RuntimeError(f"weight layout mismatch: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.eval()


def make_prompts(
    n: int, vocab: int, lo: int, hi: int, seed: int, stops: tuple[int, ...], end_token: int | None
) -> list[list[int]]:
    """n prompts of lo..hi random context tokens (no stop tokens), then ``end_token`` if given."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(lo, hi + 1, (1,), generator=g))
        ids = torch.randint(0, vocab, (length,), generator=g)
        ids[torch.isin(ids, torch.tensor(stops))] = 1
        out.append(ids.tolist() + ([] if end_token is None else [end_token]))
    return out


def hf_beam_search(hf: torch.nn.Module, prompts: list[list[int]], cfg: DecodeConfig) -> list[list[int]]:
    """transformers' beam search on the left-padded batch; continuations cut after the first stop."""
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), cfg.stop_tokens[0], dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :] = torch.tensor(p)
        mask[i, T - len(p) :] = 1
    with torch.inference_mode():
        out = hf.generate(
            ids.to(hf.device),
            attention_mask=mask.to(hf.device),
            num_beams=cfg.num_beams,
            length_penalty=cfg.length_penalty,
            no_repeat_ngram_size=cfg.no_repeat_ngram_size or None,
            repetition_penalty=cfg.repetition_penalty,
            eos_token_id=list(cfg.stop_tokens),
            pad_token_id=cfg.stop_tokens[0],
            max_new_tokens=cfg.max_new_tokens,
            early_stopping=cfg.early_stopping,
            do_sample=False,
        )[:, T:].tolist()
    cut = []
    for seq in out:
        stop = next((i for i, t in enumerate(seq) if t in cfg.stop_tokens), None)
        cut.append(seq if stop is None else seq[: stop + 1])
    return cut


def timed_pair(ours, theirs, repeats: int) -> list[tuple[float, float, list[list[int]]]]:
    """(best wall time, best process CPU time, output) for each side. Calls alternate so
    that load from other processes on the machine hits both sides alike; CPU time is
    the steadier figure on a busy machine (it leaves out time spent waiting for a core)."""
    fns = (ours, theirs)
    for fn in fns:
        fn()  # warm-up: allocator, kernels, transformers' first-call set-up
    best = [[float("inf"), float("inf"), []] for _ in fns]
    for _ in range(repeats):
        for fn, b in zip(fns, best):
            wall, cpu = time.perf_counter(), time.process_time()
            b[2] = fn()
            b[0] = min(b[0], time.perf_counter() - wall)
            b[1] = min(b[1], time.process_time() - cpu)
    return [tuple(b) for b in best]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny", help="GPT-2 preset: tiny, gpt2, ... (random weights)")
    ap.add_argument("--prompts", type=int, default=8, help="prompts decoded together in one batch")
    ap.add_argument("--prompt-len", type=int, nargs=2, default=(30, 40), metavar=("MIN", "MAX"))
    ap.add_argument("--beams", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=1, help="timed calls per side; the best is reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both sides decode there)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument(
        "--prompt-end",
        choices=("eos", "none", "both"),
        default="both",
        help="eos: context + [50256] as in the recipe; none: no final 50256 (hypotheses run longer)",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    model = GPT2(build_config(args.model, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)).eval()
    hf = to_transformers(model).to(args.device)
    model = model.to(args.device)
    results = []
    cfg = DecodeConfig(num_beams=args.beams, max_new_tokens=args.max_new_tokens)

    import transformers

    print(
        f"model={args.model} ({model.num_parameters() / 1e6:.1f}M params, random)  prompts={args.prompts} of "
        f"{args.prompt_len[0]}-{args.prompt_len[1]} random tokens  beams={cfg.num_beams} "
        f"length_penalty={cfg.length_penalty} no_repeat_ngram={cfg.no_repeat_ngram_size} stops={cfg.stop_tokens} "
        f"max_new_tokens={cfg.max_new_tokens} early_stopping={cfg.early_stopping}"
    )
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, device {args.device}, "
        f"CPU threads={torch.get_num_threads()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, best of {args.repeats} (alternating)"
    )
    print(f"{'prompts':16}{'':14}{'wall s':>8}{'CPU s':>8}{'tokens':>8}{'tok/s wall':>11}{'tok/s CPU':>10}")
    # eos: the recipe's context + [50256]. A random model tends to echo the last prompt
    # token, so there many hypotheses stop at once; without it, they run on.
    ends = {"eos": 50256, "none": None}
    for label in ends if args.prompt_end == "both" else [args.prompt_end]:
        end = ends[label]
        prompts = make_prompts(args.prompts, model.config.vocab_size, *args.prompt_len, args.seed, cfg.stop_tokens, end)
        (w_ours, c_ours, ours), (w_hf, c_hf, theirs) = timed_pair(
            lambda p=prompts: beam_search(model, p, cfg, keep_stop_token=True),
            lambda p=prompts: hf_beam_search(hf, p, cfg),
            args.repeats,
        )
        name = f"end={label}"
        for who, wall, cpu, out in (("splitlora", w_ours, c_ours, ours), ("transformers", w_hf, c_hf, theirs)):
            n = sum(map(len, out))
            print(f"{name:16}{who:14}{wall:8.2f}{cpu:8.2f}{n:8d}{n / wall:11.1f}{n / cpu:10.1f}")
            name = ""
        n_ours, n_hf = sum(map(len, ours)), sum(map(len, theirs))
        agree = sum(a == b for a, b in zip(ours, theirs))
        results.append({"prompt_end": label, "prompts": len(prompts), "equal_outputs": agree,
                        "ours": {"wall_s": w_ours, "cpu_s": c_ours, "tokens": n_ours},
                        "transformers": {"wall_s": w_hf, "cpu_s": c_hf, "tokens": n_hf}})
        print(
            f"{'':16}speed-up (tokens/s): wall {(n_ours / w_ours) / (n_hf / w_hf):.2f}x, "
            f"CPU {(n_ours / c_ours) / (n_hf / c_hf):.2f}x; outputs equal for {agree}/{len(prompts)} prompts"
        )
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump({"model": args.model, "device": args.device, "beams": cfg.num_beams, "torch": torch.__version__,
                       "transformers": transformers.__version__, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
