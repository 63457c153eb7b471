#!/usr/bin/env bash
# The GPU benchmark of issue 13, in one device call (docs/benchmarks.md): `loraforge bench` on full-size SD 1.5 and
# SDXL with random weights, bf16, cached latents and text embeddings, within 8 minutes (each call has a hard time
# limit; they add up to 480 s); JSON and Markdown tables under $OUT: sd15, sdxl (checkpointing off / on /
# selective), sdxl-quant (int8 and fp8 frozen base), sdxl-cl (channels_last), sdxl-compile (regional torch.compile,
# modes default and reduce-overhead) × .json/.md, and log.txt.
#
# Device tool call:  run(command="bash scripts/bench_device.sh", carry=[".device-wheels"], timeout_s=590)
# Here, without a GPU: BENCH_SMOKE=1 OUT=/tmp/out bash scripts/bench_device.sh   (tiny models, 64 px, CPU)
set -uo pipefail
OUT=${OUT:-$PWD/bench-out}
mkdir -p "$OUT"
log="$OUT/log.txt"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}

# The device image lacks diffusers, pydantic, prodigyopt, lycoris-lora...: installed from the carried wheels.
if [ -z "${BENCH_SMOKE:-}${PEER_SMOKE:-}" ] && compgen -G ".device-wheels/*.whl" >/dev/null; then  # cp312 wheels
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .device-wheels/*.whl || { echo "wheel install failed" | tee -a "$log"; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
$PY - <<'PY' 2>&1 | tee -a "$log"
import torch, diffusers, transformers, peft, accelerate, loraforge
print("torch", torch.__version__, "cuda", torch.version.cuda, "diffusers", diffusers.__version__, "transformers",
      transformers.__version__, "peft", peft.__version__, "accelerate", accelerate.__version__)
print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (no GPU)")
PY
[ "${PIPESTATUS[0]}" = 0 ] || { echo "imports failed: see $log"; exit 1; }

bench() {  # name, seconds allowed, bench arguments...
    local name=$1 limit=$2
    shift 2
    echo "== $name: loraforge bench $*" | tee -a "$log"
    timeout "$limit" $PY -m loraforge bench "$@" -o "$OUT/$name.json" --markdown "$OUT/$name.md" >>"$log" 2>&1
    local rc=$?
    [ "$rc" = 0 ] && cat "$OUT/$name.md" | tee -a "$log" || echo "== $name failed (exit $rc)" | tee -a "$log"
}

if [ -n "${BENCH_SMOKE:-}" ]; then  # the same calls on the tiny models: checks the script on a CPU (no compile, no fp8)
    bench sd15 300 --size tiny --family sd15 --resolution 64 --batch 1,2 --steps 2 --warmup 1 --baseline
    bench sdxl 300 --size tiny --family sdxl --resolution 64 --batch 2 --checkpointing off,on,selective --steps 2 \
        --warmup 1
    bench sdxl-quant 300 --size tiny --family sdxl --resolution 64 --batch 2 --quantize int8 --steps 2 --warmup 1
    bench sdxl-cl 300 --size tiny --family sdxl --resolution 64 --batch 2 --channels-last on --steps 2 --warmup 1
    exit 0
fi
# targets (issue 13): SD 1.5-512 ≥ 150 img/s; SDXL-1024 rank 32 batch ≥ 4: ≥ 20 img/s without checkpointing,
# ≥ 14 with it, in ≤ 12 GB with checkpointing. The limits add up to 480 s.
SDXL="--size full --family sdxl --resolution 1024 --batch 4 --rank 32 --mixed-precision bf16"
bench sd15 70 --size full --family sd15 --resolution 512 --batch 8 --rank 32 --mixed-precision bf16 \
    --steps 8 --warmup 2 --baseline
bench sdxl 140 $SDXL --checkpointing off,on,selective --steps 8 --warmup 2 --baseline
bench sdxl-quant 90 $SDXL --quantize int8,fp8 --steps 8 --warmup 2  # needs torchao among the wheels
bench sdxl-cl 50 $SDXL --channels-last on --steps 8 --warmup 2
bench sdxl-compile 130 $SDXL --compile on,reduce-overhead --steps 8 --warmup 4
