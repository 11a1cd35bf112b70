"""Step time of the MoE-P student (`model.family: moep`) against a dense GPT-2 with the same
*active* parameter count, measured in one run: the two steps interleaved on the same
windows, so both see the same machine load.

Active parameters are those a token's output depends on: everything but the experts and
parallel blocks its routers did not choose, i.e. (E - k) / E of the routed weights left
out. The dense GPT-2 has MoE-P's depth and width, its MLP width solved so that its
parameter count equals MoE-P's active count. Each step is what the training loop does:
forward, the objective's loss (ce, plus the router term for MoE-P), backward, AdamW.

MoE-P's MoE projections compute only the chosen experts, but every parallel block runs
on every token (its attention needs all earlier tokens' keys and values; docs/models.md),
so MoE-P computes more than its active parameters: the "computed" column counts the
weights that multiply every token, and computed / active is the step-time ratio that
6 N FLOPs per token would predict. The number to read is the last line: the median over
steps of each MoE-P step's time over the same step's GPT-2 time.

Usage: python benchmarks/bench_moe.py [--steps 30] [--n-layer 4] [--n-embd 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import machine_line, synthetic_shard

from sdce import config as cfg
from sdce import objectives
from sdce.data.batches import global_offsets, windows
from sdce.data.tokenizer import load
from sdce.model import build_model, count_parameters


def routed_parameters(model) -> tuple[int, int]:
    """(parameters of MoE-P's expert projections, of its parallel blocks): the weights a
    router chooses among (routers, dense blocks and embeddings are always used)."""
    from sdce.moep.modeling_moep import MoEPParallelLayer, MoEPProjection

    experts = blocks = 0
    for module in model.modules():
        if isinstance(module, MoEPProjection):
            experts += module.weight.numel() + module.bias.numel()
        elif isinstance(module, MoEPParallelLayer):
            blocks += sum(p.numel() for p in module.blocks.parameters())
    return experts, blocks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--documents", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--parallel-n-embd", type=int, default=64)
    ap.add_argument("--parallel-n-head", type=int, default=2)
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line())
    tmp = Path(tempfile.mkdtemp())
    tok, data = synthetic_shard(args.documents, tmp)
    tok = load(tmp / "tok")

    size = {"n_layer": args.n_layer, "n_embd": args.n_embd, "n_head": args.n_head}
    moe = {"n_experts": args.experts, "experts_per_token": args.top_k}
    moe.update(parallel_n_embd=args.parallel_n_embd, parallel_n_head=args.parallel_n_head)
    moep_spec = cfg.validate({**size, "family": "moep", "moe": moe}, "model")
    moep = build_model(moep_spec, tok, args.block_size, seed=0)
    experts, blocks = routed_parameters(moep)
    unused = (args.experts - args.top_k) / args.experts
    total = count_parameters(moep)
    active = round(total - unused * (experts + blocks))
    computed = round(total - unused * experts)

    # GPT-2 of MoE-P's depth and width; its MLP width solved for MoE-P's active count
    d, L = args.n_embd, args.n_layer
    probe = build_model(cfg.validate({**size, "intermediate_size": 1}, "model"), tok, args.block_size, seed=0)
    inner = round((active - count_parameters(probe)) / (L * (2 * d + 1))) + 1
    gpt2 = build_model(
        cfg.validate({**size, "intermediate_size": inner}, "model"), tok, args.block_size, seed=0
    )

    guidance = cfg.validate({"objective": "ce"}, "guidance")
    obj = objectives.get("ce")
    arms = {
        "gpt2 (dense)": (gpt2, None),
        "moep": (
            moep,
            objectives.aux_weights({"model": moep_spec, "training": {"z_loss": 0}, "guidance": guidance}),
        ),
    }
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, (m, _) in arms.items()}

    def step(name, x, y) -> float:
        model, aux = arms[name]
        t = time.perf_counter()
        batch = obj.batch(x, y, None, guidance, tok)
        outputs = model(**batch.inputs)
        out = objectives.compute(obj, outputs.logits, batch, None, 0.0, guidance, aux, outputs)
        out["loss"].backward()
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)
        return time.perf_counter() - t

    times: dict[str, list[float]] = {name: [] for name in arms}
    for s in range(args.steps + 2):
        x, y = windows(
            data, global_offsets(len(data), args.block_size, args.batch_size, 0, s), args.block_size
        )
        order = list(arms)[s % 2 :] + list(arms)[: s % 2]  # neither arm always runs first
        for name in order:
            dt = step(name, x, y)
            if s >= 2:  # warm-up steps are not counted
                times[name].append(dt)
    counts = {"gpt2 (dense)": (count_parameters(gpt2),) * 3, "moep": (total, active, computed)}
    print(f"{'student':<14} {'parameters':>11} {'active':>9} {'computed':>9} {'median ms':>10}")
    for name, ts in times.items():
        n, a, c = counts[name]
        print(f"{name:<14} {n:>11,} {a:>9,} {c:>9,} {1000 * statistics.median(ts):>10.1f}")
    ratio = statistics.median(m / g for m, g in zip(times["moep"], times["gpt2 (dense)"], strict=True))
    print(
        f"({args.steps} interleaved steps, batch {args.batch_size} x {args.block_size}, V = {len(tok)}, "
        f"GPT-2 MLP width {inner}; computed / active = {computed / active:.2f}; "
        f"load average at the end: {os.getloadavg()[0]:.2f})"
    )
    print(f"step time moep / dense gpt2 of the same active parameters: {ratio:.2f}")


if __name__ == "__main__":
    main()
