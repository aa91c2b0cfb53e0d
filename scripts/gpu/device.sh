#!/usr/bin/env bash
# Runs on the GPU machine (CUDA, cmake, ninja, PyTorch; no Rust), from the repository root,
# with the .gpu/ folder that `cargo xtask gpu-build` made. See docs/gpu.md.
#
#   bash scripts/gpu/device.sh build   # llama.cpp with CUDA from the packed source (~4 min),
#                                      # benchmark models, conformance + CPU/GPU agreement
#   bash scripts/gpu/device.sh families # llama.cpp vs candle on CUDA, every fixture family/format
#   bash scripts/gpu/device.sh isolation # serve with the llama.cpp plugin in-process vs in a worker
#   bash scripts/gpu/device.sh prepare # only the llama.cpp build and the benchmark models
#   bash scripts/gpu/device.sh bench   # the benchmark (needs `build` first on the same machine)
#   bash scripts/gpu/device.sh http    # HTTP through `llmlocal serve`, llama.cpp plugin alone,
#                                      # and through `direct-bench http` (the floor)
#                                      # (HTTP_ARGS="--threads 4 --repeat 9": more gpu-bench flags)
#   bash scripts/gpu/device.sh candle  # candle vs llama.cpp, F16 and Q8_0, one stream, with
#                                      # candle's fused decode kernels and without
#   bash scripts/gpu/device.sh both    # `llmlocal serve` with both CUDA plugins: does it load?
#   bash scripts/gpu/device.sh wake    # what one thread wake-up / loopback TCP hop costs here
#   bash scripts/gpu/device.sh download # 1 GiB from the loopback hub: llmlocal vs curl (issue #5)
#
# Results go to $OUT (the device tool's output folder) or /tmp/llmlocal-gpu/out.
set -uo pipefail

STEP=${1:-all}
G=$PWD/.gpu
W=/tmp/llmlocal-gpu
OUT=${OUT:-$W/out}
mkdir -p "$W/models" "$OUT"
ARCH=${CUDA_ARCH:-90}

# The CUDA libraries: the driver's libcuda, and cuBLAS/cuRAND/NVRTC from PyTorch's wheels.
SITE=$(python3 -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null)
NVLIBS=$(find "$SITE/nvidia" -maxdepth 3 -type d -name lib 2>/dev/null | tr '\n' ':')
export LD_LIBRARY_PATH="$W/build/bin:${NVLIBS}${LD_LIBRARY_PATH:-}"
M=$G/models
B=$W/bin
P=$W/plugins

# `cargo xtask gpu-build` ships the binaries and plugins xz-compressed (the CUDA kernels make
# the candle plugin 65 MB; the device tool carries 64 MiB in all).
unpack() {
    mkdir -p "$B" "$P"
    local f dest
    for f in "$G"/bin/*.xz "$G"/plugins/*.xz; do
        dest=$W/$(basename "$(dirname "$f")")/$(basename "$f" .xz)
        [ -f "$dest" ] && [ "$dest" -nt "$f" ] && continue
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$f" "$dest" || return 1
        chmod +x "$dest"
    done
}

build_llama() {
    if [ -f "$W/direct-bench" ] && [ -f "$W/build/bin/libggml-cuda.so" ]; then
        echo "llama.cpp CUDA build already there"
        return 0
    fi
    rm -rf "$W/llama.cpp" "$W/build"
    tar -xzf "$G/llama.cpp.tar.gz" -C "$W" || return 1
    # Shared libraries, as the plugin was linked (dynamic-link); OpenMP as llama-cpp-sys-2
    # builds it; only this machine's CUDA architecture, to keep the build short.
    # --exclude-libs: libggml-cuda carries its own copy of libstdc++ here (no libstdc++.so.6
    # among its NEEDED) and exported all 2586 std:: symbols of it. In a server that had loaded
    # libstdc++.so through the candle CUDA plugin first, libllama's `ostream << long` bound to
    # that copy and crashed (SIGSEGV in llama_model::print_info). With the flag, what comes
    # from static archives stays private to each library. The crate's
    # copy of llama.cpp has no tool sources (llama-bench, quantize): direct_bench.c stands in.
    cmake -S "$W/llama.cpp" -B "$W/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=ON -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
        -DGGML_NATIVE=OFF -DGGML_OPENMP=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF \
        -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_APP=OFF \
        -DCMAKE_SHARED_LINKER_FLAGS="-Wl,--exclude-libs,ALL" >"$OUT/cmake.log" 2>&1 || {
        tail -30 "$OUT/cmake.log"; return 1; }
    local started=$SECONDS
    cmake --build "$W/build" --target llama -j "$(nproc)" >>"$OUT/cmake.log" 2>&1 || {
        tail -30 "$OUT/cmake.log"; return 1; }
    echo "llama.cpp CUDA build: $((SECONDS - started)) s"
    ls "$W/build/bin"
    cc -O2 -o "$W/direct-bench" scripts/gpu/direct_bench.c -I"$W/llama.cpp/include" \
        -I"$W/llama.cpp/ggml/include" -L"$W/build/bin" -Wl,-rpath-link,"$W/build/bin" -lllama -lggml -lggml-base || return 1
}

write_models() {
    local tok=$M/stories260K.gguf
    [ -f "$W/models/1b-f16.gguf" ] ||
        "$B/gpu-bench" write-model --storage f16 --tokenizer-from "$tok" --out "$W/models/1b-f16.gguf"
    [ -f "$W/models/1b-q8_0.gguf" ] ||
        "$B/gpu-bench" write-model --storage q8_0 --tokenizer-from "$tok" --out "$W/models/1b-q8_0.gguf"
    [ -f "$W/models/1b-q4_k_m.gguf" ] ||
        "$W/direct-bench" quantize "$W/models/1b-f16.gguf" "$W/models/1b-q4_k_m.gguf" \
            >"$OUT/quantize.log" 2>&1
    ls -la "$W/models"
}

conformance() {
    local rc=0
    "$B/conformance" --plugin "$P/libllmlocal_backend_llama_cpp.so" --device cuda \
        --model "$M/tiny-llama-f32.gguf" --model "$M/tiny-llama-q8_0.gguf" \
        --model "$M/stories260K.gguf" --json "$OUT/conformance-llama-cpp.json" || rc=1
    if [ -f "$P/libllmlocal_backend_candle.so" ]; then
        "$B/conformance" --plugin "$P/libllmlocal_backend_candle.so" --device cuda \
            --model "$M/tiny-llama" --model "$M/tiny-llama-f32.gguf" \
            --model "$M/tiny-llama-q8_0.gguf" --model "$M/stories260K-hf" \
            --json "$OUT/conformance-candle.json" || rc=1
    fi
    return $rc
}

# The family agreement (host/tests/agreement.rs, built by gpu-build as bin/agreement): llama.cpp
# and candle on CUDA, same weights, every architecture family and format of the fixtures
# (written here by the test itself), greedy tokens and logits within the CPU tolerances.
families() {
    [ -f "$P/libllmlocal_backend_candle.so" ] || { echo "families: no candle plugin"; return 1; }
    [ -x "$B/agreement" ] || { echo "families: no agreement binary (rebuild .gpu)"; return 1; }
    LLMLOCAL_FIXTURES_DIR=$W/fixtures LLMLOCAL_TEST_PLUGIN_DIR=$P LLMLOCAL_PLUGIN_DIR_BUILT=$P \
        LLMLOCAL_AGREEMENT_DEVICE=cuda "$B/agreement" --nocapture 2>&1 | tee "$OUT/families.log"
}

agreement() {
    local rc=0
    for model in tiny-llama-f32.gguf stories260K.gguf; do
        "$B/gpu-bench" agree --plugin-dir "$P" --backend llama-cpp --model "$M/$model" \
            --tokens 64 --require 32 || rc=1
    done
    if [ -f "$P/libllmlocal_backend_candle.so" ]; then
        for model in tiny-llama stories260K-hf; do
            "$B/gpu-bench" agree --plugin-dir "$P" --backend candle --model "$M/$model" \
                --tokens 64 --require 32 || rc=1
        done
        # An F16 GGUF runs candle's dense network on the GPU and quantized_llama (widened
        # to F32) on the CPU: the two implementations must pick the same tokens. The
        # fixture's sizes (multiples of 8) also take the fused decode kernels
        # (plugins/candle/kernels/decode.cu); stories260K's FFN of 172 does not.
        local name f16
        for name in tiny-llama-f32 stories260K; do
            f16=$W/models/$name-as-f16.gguf
            [ -f "$f16" ] || "$W/direct-bench" quantize "$M/$name.gguf" "$f16" f16 \
                >>"$OUT/quantize.log" 2>&1
            "$B/gpu-bench" agree --plugin-dir "$P" --backend candle --model "$f16" \
                --tokens 64 --require 32 || rc=1
        done
        # The benchmark model at real size (random weights): head size 64, 4 query heads per
        # KV head, 16 layers through the fused kernels.
        "$B/gpu-bench" agree --plugin-dir "$P" --backend candle --model "$W/models/1b-f16.gguf" \
            --tokens 64 --require 32 || rc=1
        # After 1100 prompt tokens: the prompt through the prefill kernels (causal softmax,
        # SwiGLU), then decode steps past 1024 positions, where attention splits over blocks.
        "$B/gpu-bench" agree --plugin-dir "$P" --backend candle --model "$W/models/1b-f16.gguf" \
            --tokens 40 --require 32 --prompt-tokens 1100 || rc=1
    fi
    return $rc
}

# Device-to-device copy bandwidth through PyTorch, GB/s one way (bytes read = bytes written).
bandwidth() {
    python3 - <<'EOF'
import torch
n = 1 << 30
a = torch.empty(n, dtype=torch.uint8, device="cuda")
b = torch.empty_like(a)
for _ in range(3):
    b.copy_(a)
torch.cuda.synchronize()
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record()
for _ in range(20):
    b.copy_(a)
end.record()
torch.cuda.synchronize()
print(f"{20 * n / (start.elapsed_time(end) / 1e3) / 1e9:.0f}")
EOF
}

bench() {
    local bw
    bw=$(bandwidth) || bw=""
    echo "copy bandwidth (one way): ${bw:-unknown} GB/s"
    local extra=()
    [ -n "$bw" ] && extra+=(--bandwidth-gbs "$bw")
    [ -f "$P/libllmlocal_backend_candle.so" ] && extra+=(--candle F16,Q8_0)
    "$B/gpu-bench" run --plugin-dir "$P" --device cuda \
        --model "F16=$W/models/1b-f16.gguf" --model "Q8_0=$W/models/1b-q8_0.gguf" \
        --model "Q4_K_M=$W/models/1b-q4_k_m.gguf" \
        --direct-bench "$W/direct-bench" --llmlocal "$B/llmlocal" \
        "${extra[@]}" --json "$OUT/gpu-bench.json" --log-dir "$OUT"
}

# HTTP only, F16 only, with the llama.cpp plugin alone in the server's plugin folder (with the
# candle CUDA plugin also loaded, the server process died during the model load; see docs/gpu.md),
# and `direct-bench http` beside it: the same requests to llama.cpp behind the thinnest server.
http_only() {
    mkdir -p "$W/plugins-llama"
    cp "$P/libllmlocal_backend_llama_cpp.so" "$W/plugins-llama/"
    "$B/gpu-bench" run --plugin-dir "$W/plugins-llama" --device cuda \
        --model "F16=$W/models/1b-f16.gguf" --parallel 1 --http-floor \
        --direct-bench "$W/direct-bench" --llmlocal "$B/llmlocal" \
        --json "$OUT/gpu-bench-http.json" --log-dir "$OUT" ${HTTP_ARGS:-}
}

# Process isolation on the GPU (issue #25): the llama.cpp plugin through `llmlocal serve`
# in-process and in a worker, alternating, F16, one stream (plugins from --plugin-dir default
# to a worker, so both modes are named in a config). ISO_ROUNDS pairs (default 2).
isolation() {
    mkdir -p "$W/plugins-llama"
    cp "$P/libllmlocal_backend_llama_cpp.so" "$W/plugins-llama/"
    local mode round
    for mode in in-process process; do
        printf '[plugins.isolation]\nllama-cpp = "%s"\n' "$mode" >"$W/isolation-$mode.toml"
    done
    for round in $(seq "${ISO_ROUNDS:-2}"); do
        for mode in in-process process; do
            echo "== round $round: $mode"
            LLMLOCAL_CONFIG=$W/isolation-$mode.toml "$B/gpu-bench" run \
                --plugin-dir "$W/plugins-llama" --device cuda \
                --model "F16=$W/models/1b-f16.gguf" --parallel 1 \
                --direct-bench "$W/direct-bench" --llmlocal "$B/llmlocal" \
                --json "$OUT/isolation-$mode-$round.json" --log-dir "$OUT" ${HTTP_ARGS:-} || return 1
        done
    done
}

# candle vs llama.cpp on the F16 and Q8_0 models, one stream (no batching runs); twice, with
# candle's fused decode kernels (the default) and without, so both compare in one session.
candle_only() {
    local fused
    for fused in 1 0; do
        echo "== LLMLOCAL_CANDLE_FUSED_DECODE=$fused"
        LLMLOCAL_CANDLE_FUSED_DECODE=$fused "$B/gpu-bench" run --plugin-dir "$P" --device cuda \
            --model "F16=$W/models/1b-f16.gguf" --model "Q8_0=$W/models/1b-q8_0.gguf" \
            --parallel 1 --candle F16,Q8_0 --direct-bench "$W/direct-bench" \
            --llmlocal "$B/llmlocal" --json "$OUT/gpu-bench-candle-fused$fused.json" \
            --log-dir "$OUT" || return 1
    done
}

# `llmlocal serve` with both CUDA plugins in its folder, loading the F16 model in llama.cpp:
# earlier runs saw the server stop answering during that load. Says how it ends: exit status
# (a signal number shows as 128+N), a backtrace when gdb is there, the log's last lines.
serve_both() {
    local log=$OUT/serve-both.log port=18555 pid status=running
    local runner=()
    command -v gdb >/dev/null && runner=(gdb -q -batch -ex run -ex bt -ex "info sharedlibrary" --args)
    LLMLOCAL_PLUGIN_PATH=$P LLMLOCAL_LOG=debug "${runner[@]}" "$B/llmlocal" serve \
        --bind 127.0.0.1:$port --backend llama-cpp --model "bench=$W/models/1b-f16.gguf" \
        >"$OUT/serve-both.out" 2>"$log" &
    pid=$!
    for _ in $(seq 1 120); do
        curl -sf "http://127.0.0.1:$port/health" >/dev/null && { status=healthy; break; }
        kill -0 $pid 2>/dev/null || { wait $pid; status="exited $?"; break; }
        sleep 1
    done
    echo "serve with both plugins: $status"
    if [ "$status" = healthy ]; then
        curl -s "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
            -d '{"model":"bench","prompt":"Once","max_tokens":8}' | head -c 600; echo
    fi
    kill $pid 2>/dev/null; wait $pid 2>/dev/null
    tail -5 "$log"; tail -40 "$OUT/serve-both.out"
    dmesg 2>/dev/null | tail -5
}

# One thread hand-off and one loopback TCP hop on this machine (scripts/gpu/wake_bench.c): the
# floor under the HTTP path's overhead. Needs only gcc.
wake() {
    gcc -O2 -pthread -o "$W/wake-bench" scripts/gpu/wake_bench.c || return 1
    "$W/wake-bench" | tee "$OUT/wake-bench.jsonl"
}

# llmlocal's verified download vs curl on this machine's CPU (host/examples/download_bench.rs),
# with one core's SHA-256 rate beside it: the bound of a verified download.
download() {
    echo "sha_ni: $(grep -c -w sha_ni /proc/cpuinfo) of $(nproc) CPUs"
    command -v openssl >/dev/null && openssl speed -evp sha256 -bytes 16384 -seconds 2 2>/dev/null | tail -1
    "$B/download_bench" --size-mib 1024 --runs 6 | tee "$OUT/download-bench.txt"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$OUT/gpu.txt"
[ "$STEP" = env ] || cat "$OUT/gpu.txt"
unpack || { echo "cannot unpack .gpu/"; exit 1; }
case "$STEP" in
build)
    build_llama || exit 1
    write_models || exit 1
    rc=0
    conformance || rc=1
    agreement || rc=1
    families || rc=1
    exit $rc
    ;;
prepare) build_llama && write_models ;;
# Unpacked binaries only; `eval "$(bash scripts/gpu/device.sh env)"` then gives a shell the
# paths (W, B, P, M) and the library path the steps use.
unpack) ;;
env) printf 'export W=%q B=%q P=%q M=%q LD_LIBRARY_PATH=%q\n' "$W" "$B" "$P" "$M" "$LD_LIBRARY_PATH" ;;
bench) bench ;;
families) families ;;
isolation) build_llama && write_models && isolation ;;
http)
    build_llama || exit 1
    [ -f "$W/models/1b-f16.gguf" ] || "$B/gpu-bench" write-model --storage f16 \
        --tokenizer-from "$M/stories260K.gguf" --out "$W/models/1b-f16.gguf" || exit 1
    http_only
    ;;
both) build_llama && write_models && serve_both ;;
candle) build_llama && write_models && candle_only ;;
wake) wake ;;
download) download ;;
all) build_llama && write_models && { conformance; agreement; bench; } ;;
*) echo "usage: $0 build|prepare|unpack|env|bench|http|candle|both|wake|download|all" >&2; exit 2 ;;
esac
