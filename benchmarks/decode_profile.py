"""Where a decode step of prefopt's sampler goes, and how far it is from the machine's limit. For
batches of 16, 64 and 256 sequences (K = 4 a prompt, ≈60-token prompts, 32 tokens generated
already) in fp32 and in bf16 (weights held in bf16, as the sampler holds them), it times:
the whole step (the sampler's forward, prefopt.engine.decoder, then drawing a token a sequence and
bookkeeping); the
forward alone; the weights' GEMMs alone (every linear layer of the decoder at the step's shape);
the LM head alone; the attention alone (every layer's shared-prefix attention). What is left of
the forward (norms, rotary embedding, activations, Python and dispatch) is the difference.

The roofline is the physical limit of the step: the larger of (its FLOPs ÷ the matmul rate of a
large GEMM) and (the bytes of weights and cache it must read ÷ the bandwidth of a large copy),
both rates measured in this process in the step's precision; "reached" is roofline ÷ step time.

    python benchmarks/decode_profile.py --json benchmarks/results-decode-profile.json
    python benchmarks/decode_profile.py --batches 16 --precisions fp32 --steps 3   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch


def timed(work, repeats: int) -> float:
    """Seconds per call of `work`: the best of three runs of `repeats` calls, after one warm-up."""
    work()
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeats):
            work()
        best = min(best, (time.perf_counter() - started) / repeats)
    return best


def machine_rates(dtype) -> dict:
    """A large GEMM's FLOP/s and a large copy's bytes/s (read and written), in `dtype`."""
    a, b = (torch.randn(2048, 2048, dtype=dtype) for _ in range(2))
    gemm = 2 * 2048**3 / timed(lambda: a @ b, 3)
    source = torch.empty(64 * 2**20, dtype=torch.uint8).random_(0, 255)  # 64 MiB
    target = torch.empty_like(source)
    copy = 2 * source.numel() / timed(lambda: target.copy_(source), 5)
    return {"gemm_flops": gemm, "copy_bytes": copy}


def machine() -> dict:
    """The machine a result came from: the CPU's name, whether it has AMX tiles, AVX-512 BF16 and
    AVX2, PyTorch's vector level, and the variables that hold a library to a lower level."""
    flags, name = set(), platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    caps = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
    return {
        "cpu": name,
        "cores": torch.get_num_threads(),
        "isa": {flag: flag in flags for flag in ("amx_tile", "amx_bf16", "avx512_bf16", "avx2")},
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "held_to": {name: os.environ[name] for name in caps if name in os.environ},
    }


def decoding_state(model, tokenizer, sequences: int, k: int, prompt_tokens: int, generated: int):
    """A DecodeState as the sampler holds it `generated` tokens into decoding, and the step's
    inputs (one token a sequence at its position)."""
    from prefopt.engine.decode import DecodeState

    prompts = sequences // k
    ids = tokenizer("the river runs past the old mill " * 40)["input_ids"][:prompt_tokens]
    state = DecodeState.empty(model.config.num_hidden_layers)
    with torch.inference_mode():
        for _ in range(prompts):
            input_ids, positions = state.prefill([ids])
            model(input_ids=input_ids, position_ids=positions, prefopt_decode=state,
                  use_cache=False, logits_to_keep=torch.tensor([len(ids) - 1]))  # fmt: skip
        state.start_decoding(k, 64)
        step = torch.full((sequences, 1), ids[-1])
        for t in range(generated):
            positions = torch.full((sequences, 1), prompt_tokens + t)
            model(input_ids=step, position_ids=positions, prefopt_decode=state, use_cache=False)
            state.length += 1
    positions = torch.full((sequences, 1), prompt_tokens + generated)
    return state, step, positions


def profile(model, tokenizer, sequences: int, precision: str, args) -> dict:
    from prefopt.engine.decode import decode_attention
    from prefopt.engine.decoder import Decoder
    from prefopt.generate.sampling import SamplingSettings, _draw, _forward, _Tracker

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    k, config = 4, model.config
    state, step, positions = decoding_state(
        model, tokenizer, sequences, k, args.prompt_tokens, args.generated
    )
    # the product's sampling (the loop's, rl's and generate's defaults): T = 1, no top-p or top-k
    settings = SamplingSettings(k=k, temperature=1.0, max_new_tokens=10**6)
    generators = [torch.Generator().manual_seed(i) for i in range(sequences)]
    tracker = _Tracker(tokenizer, set(), settings, sequences)
    alive = list(range(sequences))

    step_forward = _forward(model)  # what the sampler runs: prefopt.engine.decoder's layers

    def forward():
        # the cache's write position stays put: every call is the same step
        return step_forward(step, positions, state)

    def whole_step():
        logits = forward()
        tracker.add(alive, *_draw(logits, settings, generators))

    hidden = torch.randn(sequences, config.hidden_size, dtype=dtype)
    decoder = Decoder.of(model)
    inputs = {size: torch.randn(sequences, size, dtype=dtype)
              for size in (config.hidden_size, config.intermediate_size)}  # fmt: skip

    def gemms():  # every layer's projections as the decoder holds them (the LM head apart)
        for layer in decoder.layers:
            for weights in (layer.qkv, layer.o, layer.gate_up):
                decoder._project(inputs[config.hidden_size], weights)
            decoder._project(inputs[config.intermediate_size], layer.down)

    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    query = torch.randn(sequences, heads, 1, dim, dtype=dtype)
    key = torch.randn(sequences, kv_heads, 1, dim, dtype=dtype)
    layers = [type("Layer", (), {"layer_idx": i})() for i in range(config.num_hidden_layers)]

    def attention():
        for layer in layers:
            decode_attention(layer, query, key, key, state, None)

    with torch.inference_mode():
        seconds = {
            "step": timed(whole_step, args.steps),
            "forward": timed(forward, args.steps),
            "gemms": timed(gemms, args.steps),
            "lm_head": timed(lambda: decoder._project(hidden, decoder.head), args.steps),
            "attention": timed(attention, args.steps),
        }
    seconds["sampling"] = max(seconds["step"] - seconds["forward"], 0.0)
    seconds["rest"] = max(
        seconds["forward"] - seconds["gemms"] - seconds["lm_head"] - seconds["attention"], 0.0
    )
    flops, bytes_read = step_cost(
        model, sequences, args.prompt_tokens + args.generated,
        (sequences // k) * args.prompt_tokens + sequences * args.generated, precision,
    )  # fmt: skip
    return {"sequences": sequences, "precision": precision, "seconds": seconds, "flops": flops,
            "bytes": bytes_read}  # fmt: skip


def step_cost(model, rows: int, context: float, cached: int, precision: str) -> tuple[float, int]:
    """A decode step's FLOPs and the bytes it must read: `rows` sequences, each attending to
    `context` positions, `cached` positions of keys and values held in all (a prompt's once);
    every linear weight (the LM head included) read once, multiplied by every row."""
    config = model.config
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    layers, element = config.num_hidden_layers, 2 if precision == "bf16" else 4
    flops = 2 * rows * weights + 4 * rows * context * heads * dim * layers
    return flops, (weights + 2 * layers * kv_heads * dim * cached) * element


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default")
    parser.add_argument("--batches", default="16,64,256")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--prompt-tokens", type=int, default=60)
    parser.add_argument("--generated", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed calls a reading")
    parser.add_argument("--json")
    args = parser.parse_args()
    from prefopt.engine.model import load_model, load_tokenizer

    tokenizer, source = load_tokenizer(args.model), load_model(args.model).eval()
    rows = []
    print(f"{'seqs':>5} {'prec':>5} {'step ms':>8} {'gemms':>6} {'head':>6} {'attn':>6} "
          f"{'rest':>6} {'sample':>7} {'roofline ms':>12} {'reached':>8}")  # fmt: skip
    for precision in args.precisions.split(","):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        model = source if dtype == torch.float32 else source.to(dtype)
        rates = machine_rates(dtype)
        for sequences in map(int, args.batches.split(",")):
            row = profile(model, tokenizer, sequences, precision, args) | {"rates": rates}
            roofline = max(row["flops"] / rates["gemm_flops"], row["bytes"] / rates["copy_bytes"])
            row |= {"roofline_seconds": roofline, "reached": roofline / row["seconds"]["step"]}
            rows.append(row)
            s = row["seconds"]
            share = lambda key, s=s: f"{100 * s[key] / s['step']:5.0f}%"
            print(f"{sequences:>5} {precision:>5} {1e3 * s['step']:8.1f} {share('gemms'):>6} "
                  f"{share('lm_head'):>6} {share('attention'):>6} {share('rest'):>6} "
                  f"{share('sampling'):>7} {1e3 * roofline:12.2f} {row['reached']:7.1%}",
                  flush=True)  # fmt: skip
    for row in rows[:: len(args.batches.split(","))]:
        rates = row["rates"]
        print(f"{row['precision']}: a large GEMM {rates['gemm_flops'] / 1e9:.0f} GFLOP/s, a large "
              f"copy {rates['copy_bytes'] / 1e9:.1f} GB/s")  # fmt: skip
    if args.json:
        Path(args.json).write_text(
            json.dumps({"settings": vars(args), "machine": machine(), "results": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
