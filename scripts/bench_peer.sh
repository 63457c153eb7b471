#!/usr/bin/env bash
# diffusers' examples/dreambooth/train_dreambooth_lora_sdxl.py, unmodified, on the same random full-size SDXL,
# images and settings as `loraforge bench` (SDXL 1024, batch 4, rank 32, bf16, AdamW, no text-encoder training),
# then loraforge bench with those settings: both rows in $OUT/peer.json and $OUT/peer.md (docs/benchmarks.md).
#
# The peer script is never committed: put it in .peer/ (ignored), as docs/benchmarks.md says, and carry it:
#   run(command="bash scripts/bench_peer.sh", carry=[".device-wheels", ".peer"], timeout_s=590)
# Its time per step: (time of 3N steps − time of N steps) / 2N, so start-up and model loading cancel out.
# Here, without a GPU: PEER_SMOKE=1 OUT=/tmp/out bash scripts/bench_peer.sh   (the tiny SDXL at 64 px; the peer
# script imports torchvision, which loraforge's environment must not have, so here only with a stand-in script)
set -uo pipefail
OUT=${OUT:-$PWD/bench-out}
mkdir -p "$OUT"
log="$OUT/peer-log.txt"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
PEER=.peer/train_dreambooth_lora_sdxl.py
[ -f "$PEER" ] || { echo "$PEER is missing: docs/benchmarks.md says how to get it"; exit 1; }
if [ -z "${BENCH_SMOKE:-}${PEER_SMOKE:-}" ] && compgen -G ".device-wheels/*.whl" >/dev/null; then  # cp312 wheels
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .device-wheels/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}

SIZE=full RES=1024 BATCH=4 RANK=32 N=10 MP=bf16
if [ -n "${PEER_SMOKE:-}" ]; then SIZE=tiny RES=64 BATCH=1 RANK=4 N=1 MP=no; fi
WORK=${PEER_WORK:-/tmp/peer-bench}
mkdir -p "$WORK/images"
# the images, and the model folder: random full-size SDXL saved once in fp16 (the embedded tiny one for the smoke run)
cat >"$WORK/model.py" <<'PY'
import sys, torch
from pathlib import Path
from loraforge.models.tiny import tiny_model_dir
from loraforge.tools.bench import make_images, random_model
work, size, res, batch = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
make_images(work / "images", max(2, batch), res)
folder = work / "model"
if size == "tiny":
    folder = tiny_model_dir("sdxl")
elif not (folder / "model_index.json").is_file():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    random_model("sdxl", device, size).pipeline().to(torch.float16).save_pretrained(str(folder))
print(folder)
PY
MODEL=$($PY "$WORK/model.py" "$WORK" "$SIZE" "$RES" "$BATCH" 2>>"$log") || { echo "model folder failed: $log"; exit 1; }

peer() {  # steps → seconds the whole script took
    local steps=$1 start end
    rm -rf "$WORK/peer-out"
    start=$(date +%s.%N)
    $PY "$PEER" --pretrained_model_name_or_path "$MODEL" --instance_data_dir "$WORK/images" \
        --instance_prompt "a photo of sks noise" --output_dir "$WORK/peer-out" --resolution "$RES" \
        --train_batch_size "$BATCH" --rank "$RANK" --max_train_steps "$steps" --checkpointing_steps 1000000 \
        --learning_rate 1e-4 --lr_scheduler constant --mixed_precision "$MP" --seed 0 --report_to tensorboard \
        >>"$log" 2>&1 || { echo "the peer script failed: $log" >&2; return 1; }
    end=$(date +%s.%N)
    $PY -c "print($end - $start)"
}
short=$(peer "$N") && long=$(peer $((3 * N))) || exit 1
$PY -m loraforge bench --size "$SIZE" --family sdxl --resolution "$RES" --batch "$BATCH" --rank "$RANK" \
    --mixed-precision "$MP" --steps "$((2 * N))" --warmup 3 -o "$WORK/loraforge.json" >>"$log" 2>&1 || exit 1
$PY - "$WORK/loraforge.json" "$short" "$long" "$N" "$BATCH" "$OUT" "$PEER" <<'PY'
import hashlib, json, sys
from pathlib import Path
from loraforge.tools.bench import markdown
report = json.loads(Path(sys.argv[1]).read_text())
short, long, n, batch, out, peer = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), Path(sys.argv[6]), sys.argv[7]
ours = report["rows"][0]
step = (long - short) / (2 * n)
row = {**{k: ours[k] for k in ("family", "size", "resolution", "batch", "rank", "checkpointing", "compile",
                              "optimizer", "algo", "mixed_precision", "device")},
       "impl": "diffusers train_dreambooth_lora_sdxl.py", "images_per_s": batch / step, "step_s_median": step,
       "step_s_min": None, "step_s_max": None, "peak_rss_mib": None, "peak_allocated_mib": None,
       "peak_reserved_mib": None, "achieved_tflops": None, "mfu": None,
       "script_sha256": hashlib.sha256(Path(peer).read_bytes()).hexdigest(), "seconds": [short, long]}
report["rows"].append(row)
report["speedup_over_peer"] = ours["images_per_s"] / row["images_per_s"]
(out / "peer.json").write_text(json.dumps(report, indent=1) + "\n")
(out / "peer.md").write_text(markdown(report) + f"\nloraforge / peer: {report['speedup_over_peer']:.2f}×\n")
print(markdown(report), f"loraforge / peer: {report['speedup_over_peer']:.2f}×")
PY
