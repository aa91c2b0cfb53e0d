"""GPU time of one generated token through the candle plugin's fused decode kernels.

Runs the kernels of plugins/candle/kernels/decode.cu (compiled to PTX as build.rs does) in
the order src/dense_llama.rs launches them for one token, on random weights of
Llama-3.2-1B shapes, with CuPy and without Rust or candle:

- "graph": one token captured as a CUDA graph and replayed: the GPU's own time per token,
  without the gaps that launching from the CPU leaves;
- per kernel: each kind over its 16 layers in a graph, as time and (for the GEMVs) GB/s of
  weights read, next to cuBLAS (cupy.matmul) on the same shapes.

Comparing "graph" with the plugin's measured time per token says how much of that time the
CPU's launches add. First it checks the attention kernel against a float64 reference at
`--pos` (softmax chunks of 2048 positions: beyond that, the online softmax across chunks),
the argmax kernel on ties, and the prefill kernels (causal softmax, SwiGLU over many rows);
a mismatch exits with status 1. Usage, on the GPU machine from the repository root:

    nvcc --ptx -O3 -arch=compute_90 -o /tmp/decode.ptx plugins/candle/kernels/decode.cu
    python3 scripts/gpu/decode_kernels_bench.py /tmp/decode.ptx [--pos 600]
"""

import argparse
import json

import cupy as cp
import numpy as np

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB, LAYERS = 2048, 32, 8, 64, 8192, 128256, 16
# As src/decode_kernels.rs: attention split over blocks of SPLIT_SPAN positions beyond SPLIT_FROM.
SPLIT_FROM, SPLIT_SPAN = 1024, 512
U32, F32 = np.uint32, np.float32


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("ptx")
    parser.add_argument("--pos", type=int, default=600, help="position of the token")
    parser.add_argument("--json")
    args = parser.parse_args()
    # The KV cache grows by doubling from 256 positions, as dense_llama.rs's does.
    capacity = max(256, 1 << args.pos.bit_length())
    module = cp.RawModule(path=args.ptx)
    kernel = module.get_function
    rng = cp.random.default_rng(0)

    def weights(rows, cols):
        return (rng.standard_normal((rows, cols), dtype=cp.float32) * 0.02).astype(cp.float16)

    def norm():
        return (1.0 + 0.1 * rng.standard_normal(HIDDEN, dtype=cp.float32)).astype(cp.float16)

    qkv_rows = (HEADS + 2 * KV_HEADS) * HEAD_DIM
    layers = [
        {
            "qkv": weights(qkv_rows, HIDDEN),
            "o": weights(HIDDEN, HEADS * HEAD_DIM),
            "gate_up": weights(2 * FFN, HIDDEN),
            "down": weights(HIDDEN, FFN),
            "attn_norm": norm(),
            "ffn_norm": norm(),
            "cache": rng.standard_normal((2, KV_HEADS, capacity, HEAD_DIM), dtype=cp.float32),
            # Outputs, allocated once so that a graph can capture the launches.
            "qkv_out": cp.empty(qkv_rows, cp.float16),
            "attn_out": cp.empty(HEADS * HEAD_DIM, cp.float16),
            "o_out": cp.empty(HIDDEN, cp.float16),
            "mid": cp.empty(2 * HIDDEN, cp.float16),
            "gate_up_out": cp.empty(2 * FFN, cp.float16),
            "act": cp.empty(FFN, cp.float16),
            "down_out": cp.empty(HIDDEN, cp.float16),
            "end": cp.empty(2 * HIDDEN, cp.float16),
        }
        for _ in range(LAYERS)
    ]
    output = weights(VOCAB, HIDDEN)
    logits = cp.empty(VOCAB, cp.float16)
    embedding = rng.standard_normal(2 * HIDDEN, dtype=cp.float32).astype(cp.float16)
    angles = args.pos / 500000.0 ** (np.arange(HEAD_DIM // 2) * 2.0 / HEAD_DIM)
    rope = cp.asarray(np.concatenate([np.cos(angles), np.sin(angles)]).astype(np.float32))
    gemv, swiglu = kernel("gemv_f16"), kernel("swiglu_f16")
    attention = kernel(f"decode_attention_{HEAD_DIM}_f16")
    combine = kernel(f"decode_attention_combine_{HEAD_DIM}_f16")
    max_splits = (args.pos + 1 + 255) // 256
    partial = cp.empty(HEADS * max_splits * (HEAD_DIM + 2), cp.float32)
    add_rms_norm = kernel("add_rms_norm_f16")

    def run_gemv(w, x, y):
        rows, k = w.shape
        gemv(((rows + 7) // 8,), (256,), (w, x, y, U32(rows), U32(k)))

    def run_attention(layer, span=None):
        length = args.pos + 1
        if span is None:
            span = SPLIT_SPAN if length > SPLIT_FROM else length
        splits = (length + span - 1) // span
        attention(
            (HEADS, splits), (1024,),
            (layer["qkv_out"], rope, layer["cache"], layer["attn_out"], partial, U32(HEADS),
             U32(KV_HEADS), U32(capacity), U32(args.pos), U32(span), F32(HEAD_DIM ** -0.5)),
        )
        if splits > 1:
            combine((HEADS,), (HEAD_DIM,), (partial, layer["attn_out"], U32(splits)))

    def run_add_norm(x, delta, w, out):
        add_rms_norm((1,), (1024,), (x, delta, w, out, U32(HIDDEN), F32(1e-5)))

    def run_swiglu(layer):
        swiglu(((FFN + 255) // 256,), (256,), (layer["gate_up_out"], layer["act"], U32(FFN), U32(FFN)))

    def token():
        x, h = embedding[:HIDDEN], embedding[HIDDEN:]
        for layer in layers:
            run_gemv(layer["qkv"], h, layer["qkv_out"])
            run_attention(layer)
            run_gemv(layer["o"], layer["attn_out"], layer["o_out"])
            run_add_norm(x, layer["o_out"], layer["ffn_norm"], layer["mid"])
            x, h = layer["mid"][:HIDDEN], layer["mid"][HIDDEN:]
            run_gemv(layer["gate_up"], h, layer["gate_up_out"])
            run_swiglu(layer)
            run_gemv(layer["down"], layer["act"], layer["down_out"])
            run_add_norm(x, layer["down_out"], layer["attn_norm"], layer["end"])
            x, h = layer["end"][:HIDDEN], layer["end"][HIDDEN:]
        run_gemv(output, h, logits)

    results = {"pos": args.pos}
    # Unsplit, split as the plugin does, and split in uneven ranges (256 and 300 positions).
    results["attention_check"] = {
        f"span {span or 'plugin'}": check_attention(
            layers[0], lambda layer, s=span: run_attention(layer, s), rope, args.pos, capacity, rng
        )
        for span in (args.pos + 1, None, 256, 300)
    }
    results["argmax_check"] = check_argmax(kernel("argmax_f16"), rng)
    results["prefill_check"] = check_prefill(kernel("causal_softmax_f32"), swiglu, rng)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        results["eager_token_ms"] = time_ms(stream, token, repeat=50)
        results["graph_token_ms"] = time_ms(stream, graphed(stream, token), repeat=50)
        parts = {
            "gemv qkv": (lambda: [run_gemv(l["qkv"], l["mid"][HIDDEN:], l["qkv_out"]) for l in layers], "qkv"),
            "gemv o": (lambda: [run_gemv(l["o"], l["attn_out"], l["o_out"]) for l in layers], "o"),
            "gemv gate_up": (lambda: [run_gemv(l["gate_up"], l["mid"][HIDDEN:], l["gate_up_out"]) for l in layers], "gate_up"),
            "gemv down": (lambda: [run_gemv(l["down"], l["act"], l["down_out"]) for l in layers], "down"),
            "attention": (lambda: [run_attention(l) for l in layers], None),
            "add_rms_norm": (lambda: [run_add_norm(l["mid"][:HIDDEN], l["o_out"], l["ffn_norm"], l["end"]) for l in layers], None),
            "swiglu": (lambda: [run_swiglu(l) for l in layers], None),
        }
        per_kernel = {}
        for name, (fn, key) in parts.items():
            us = time_ms(stream, graphed(stream, fn), repeat=50) * 1000.0 / LAYERS
            row = {"us": round(us, 2)}
            if key:
                nbytes = layers[0][key].nbytes
                row["gbs"] = round(nbytes / us / 1e3, 1)
                x = cp.ones(layers[0][key].shape[1], cp.float16)
                blas = time_ms(stream, lambda: [l[key] @ x for l in layers], repeat=50)
                row["cublas_us"] = round(blas * 1000.0 / LAYERS, 2)
                row["cublas_gbs"] = round(nbytes / (blas * 1000.0 / LAYERS) / 1e3, 1)
            per_kernel[name] = row
        out_us = time_ms(stream, graphed(stream, lambda: run_gemv(output, embedding[HIDDEN:], logits)), repeat=50) * 1000.0
        per_kernel["gemv output"] = {"us": round(out_us, 2), "gbs": round(output.nbytes / out_us / 1e3, 1)}
        results["kernels"] = per_kernel
    weight_bytes = sum(layers[0][k].nbytes for k in ("qkv", "o", "gate_up", "down")) * LAYERS + output.nbytes
    results["weight_gb_per_token"] = round(weight_bytes / 1e9, 3)
    results["graph_weight_gbs"] = round(weight_bytes / results["graph_token_ms"] / 1e6, 1)
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    attention_ok = all(check["ok"] for check in results["attention_check"].values())
    prefill_ok = all(check["ok"] for check in results["prefill_check"].values())
    if not (attention_ok and results["argmax_check"]["ok"] and prefill_ok):
        raise SystemExit("a kernel does not match its reference")


def check_attention(layer, run_attention, rope, pos, capacity, rng):
    """decode_attention on random q/k/v and cache against float64 numpy: the output heads and
    the K/V rows it appends at `pos`."""
    qkv_rows = (HEADS + 2 * KV_HEADS) * HEAD_DIM
    layer["qkv_out"][...] = rng.standard_normal(qkv_rows, dtype=cp.float32).astype(cp.float16)
    before = cp.asnumpy(layer["cache"]).astype(np.float64)
    run_attention(layer)
    cp.cuda.Device().synchronize()
    got = cp.asnumpy(layer["attn_out"]).astype(np.float64).reshape(HEADS, HEAD_DIM)
    cache = cp.asnumpy(layer["cache"]).astype(np.float64)
    qkv = cp.asnumpy(layer["qkv_out"]).astype(np.float64)
    table = cp.asnumpy(rope).astype(np.float64)
    cos, sin = table[: HEAD_DIM // 2], table[HEAD_DIM // 2 :]

    def rotate(x):
        x0, x1 = x[..., : HEAD_DIM // 2], x[..., HEAD_DIM // 2 :]
        return np.concatenate([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)

    q = rotate(qkv[: HEADS * HEAD_DIM].reshape(HEADS, HEAD_DIM)) * HEAD_DIM ** -0.5
    k = rotate(qkv[HEADS * HEAD_DIM : (HEADS + KV_HEADS) * HEAD_DIM].reshape(KV_HEADS, HEAD_DIM))
    v = qkv[(HEADS + KV_HEADS) * HEAD_DIM :].reshape(KV_HEADS, HEAD_DIM)
    keys, values = before[0, :, : pos + 1].copy(), before[1, :, : pos + 1].copy()
    keys[:, pos], values[:, pos] = k, v
    want = np.empty_like(got)
    for head in range(HEADS):
        kv = head // (HEADS // KV_HEADS)
        scores = keys[kv] @ q[head]
        weights = np.exp(scores - scores.max())
        want[head] = weights @ values[kv] / weights.sum()
    out_err = float(np.abs(got - want).max())
    row_err = float(max(np.abs(cache[0, :, pos] - k).max(), np.abs(cache[1, :, pos] - v).max()))
    # F16 output: ~1e-3 relative rounding; the appended rows are F32.
    ok = out_err < 5e-3 * max(1.0, float(np.abs(want).max())) and row_err < 1e-5
    return {"ok": ok, "max_abs_err": out_err, "max_abs_ref": float(np.abs(want).max()),
            "appended_row_err": row_err, "capacity": capacity}


def check_argmax(argmax, rng):
    """argmax_f16 on random logits with the maximum planted twice: the lower index wins."""
    logits = rng.standard_normal(VOCAB, dtype=cp.float32).astype(cp.float16)
    logits[[777, 99999]] = 100.0
    logits[5] = cp.nan
    out = cp.zeros(1, cp.uint32)
    argmax((1,), (1024,), (logits, U32(VOCAB), out))
    got = int(out.get()[0])
    return {"ok": got == 777, "got": got, "want": 777}


def check_prefill(causal_softmax, swiglu, rng, t=386, pos=100):
    """The prefill kernels against float64: the causal softmax of a prompt chunk of t queries
    at positions pos.. (rows ordered KV head, group, query) and SwiGLU over t rows."""
    group, length = HEADS // KV_HEADS, pos + t
    rows = KV_HEADS * group * t
    scores = rng.standard_normal((rows, length), dtype=cp.float32) * 4.0
    out = cp.empty_like(scores)
    causal_softmax(((rows + 3) // 4,), (128,),
                   (scores, out, U32(rows), U32(t), U32(length), U32(pos)))
    x = scores.get().astype(np.float64)
    query = np.arange(rows) % t
    hidden = np.arange(length)[None, :] > (pos + query)[:, None]
    x[hidden] = -np.inf
    want = np.exp(x - x.max(axis=1, keepdims=True))
    want /= want.sum(axis=1, keepdims=True)
    softmax_err = float(np.abs(out.get() - want).max())
    gate_up = (rng.standard_normal((t, 2 * FFN), dtype=cp.float32) * 2.0).astype(cp.float16)
    act = cp.empty((t, FFN), cp.float16)
    swiglu(((t * FFN + 255) // 256,), (256,), (gate_up, act, U32(FFN), U32(t * FFN)))
    g, u = (gate_up[:, :FFN].get().astype(np.float64), gate_up[:, FFN:].get().astype(np.float64))
    want_act = g / (1.0 + np.exp(-g)) * u
    act_err = float(np.abs(act.get().astype(np.float64) - want_act).max())
    act_scale = float(np.abs(want_act).max())
    return {
        "causal_softmax": {"ok": softmax_err < 1e-5, "max_abs_err": softmax_err},
        "swiglu_rows": {"ok": act_err <= 2e-3 * max(1.0, act_scale), "max_abs_err": act_err,
                        "max_abs_ref": act_scale},
    }


def graphed(stream, fn):
    """fn's launches captured once as a CUDA graph; the returned function replays it."""
    fn()  # loads the kernels before capture
    stream.synchronize()
    stream.begin_capture()
    fn()
    graph = stream.end_capture()
    return lambda: graph.launch(stream)


def time_ms(stream, fn, repeat):
    """Median over 5 rounds of the mean time of `repeat` calls of fn, in ms (CUDA events)."""
    for _ in range(3):
        fn()
    rounds = []
    for _ in range(5):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record(stream)
        for _ in range(repeat):
            fn()
        end.record(stream)
        end.synchronize()
        rounds.append(cp.cuda.get_elapsed_time(start, end) / repeat)
    return sorted(rounds)[len(rounds) // 2]


if __name__ == "__main__":
    main()
