#!/usr/bin/env bash
# The GPU benchmark of issue 13, in one device call (docs/benchmarks.md): `loraforge bench` on full-size SD 1.5 and
# SDXL with random weights, bf16, cached latents and text embeddings, within about 8 minutes; JSON and Markdown
# tables under $OUT (at most 8 files come back: sd15, sdxl, sdxl-compile × .json/.md, and log.txt).
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

if [ -n "${BENCH_SMOKE:-}" ]; then  # the same calls on the tiny models: checks the script on a CPU
    bench sd15 300 --size tiny --family sd15 --resolution 64 --batch 1,2 --steps 2 --warmup 1 --baseline
    bench sdxl 300 --size tiny --family sdxl --resolution 64 --batch 2 --checkpointing off,on --steps 2 --warmup 1
    exit 0
fi
# targets (issue 13): SD 1.5-512 ≥ 150 img/s; SDXL-1024 rank 32 batch ≥ 4: ≥ 20 img/s without checkpointing,
# ≥ 14 with it, in ≤ 12 GB with checkpointing
bench sd15 120 --size full --family sd15 --resolution 512 --batch 8 --rank 32 --mixed-precision bf16 \
    --steps 10 --warmup 3 --baseline
bench sdxl 180 --size full --family sdxl --resolution 1024 --batch 4 --rank 32 --checkpointing off,on \
    --mixed-precision bf16 --steps 10 --warmup 3 --baseline
bench sdxl-compile 180 --size full --family sdxl --resolution 1024 --batch 4 --rank 32 --compile on \
    --mixed-precision bf16 --steps 10 --warmup 5
