#!/usr/bin/env bash
# Pretrain the toy model's UNet and text encoder on a lent GPU in one device call (issue 12; docs/toy-world.md).
#
# The VAE phase is cheap and done on the CPU; the UNet phase is what a GPU does in minutes. Here, once:
#   bash scripts/pretrain_device.sh prepare /work/pretrain    # copies the trained VAE + its state into .toy-gpu/
# then the device tool call (wheels as in scripts/bench_device.sh, in .device-wheels/):
#   run(command="bash scripts/pretrain_device.sh", carry=[".device-wheels", ".toy-gpu"], timeout_s=590)
# It trains the UNet from scratch on the carried VAE's latents (batch 256), judges 200 held-out prompts and exports
# the fp16 weights and report to $OUT: copy toy-sd15.safetensors / toy-sd15.json into src/loraforge/models/assets/.
# Without a GPU: TOY_SMOKE=1 OUT=/tmp/out bash scripts/pretrain_device.sh   (a few CPU steps: checks the script)
set -uo pipefail
WORK=.toy-gpu
if [ "${1:-}" = prepare ]; then
    src=${2:?usage: pretrain_device.sh prepare PRETRAIN_WORK_DIR}
    mkdir -p "$WORK"
    cp "$src/vae.safetensors" "$WORK/"
    python3 - "$src/state.json" "$WORK/state.json" <<'PY'
import json, sys
state = json.load(open(sys.argv[1]))
json.dump({"vae_step": state["vae_step"], "unet_step": 0, "seconds": {k: v for k, v in state["seconds"].items()
           if k.startswith("vae")}, "scaling_factor": None}, open(sys.argv[2], "w"), indent=1)
PY
    echo "prepared $WORK from $src (VAE step $(python3 -c "import json; print(json.load(open('$WORK/state.json'))['vae_step'])"))"
    exit 0
fi

OUT=${OUT:-$PWD/toy-out}
mkdir -p "$OUT"
log="$OUT/log.txt"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
if [ -z "${TOY_SMOKE:-}" ] && compgen -G ".device-wheels/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .device-wheels/*.whl || { echo "wheel install failed" | tee -a "$log"; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
vae_steps=$($PY -c "import json; print(json.load(open('$WORK/state.json'))['vae_step'])") || exit 1

if [ -n "${TOY_SMOKE:-}" ]; then
    args=(--device cpu --batch 2 --scenes 64 --unet-steps 3 --save-every 2 --minutes 5)
    eval_args=(--eval-prompts 4)
else
    # an H200 runs this model at batch 256 in a few tens of ms a step: 8000 steps in about 5 minutes (to be measured)
    args=(--device cuda --batch 256 --lr 5e-4 --unet-steps 8000 --save-every 1000 --minutes "${TOY_MINUTES:-6}")
    eval_args=(--eval-prompts 200)
fi
{
    $PY scripts/pretrain_toy.py --work "$WORK" --vae-steps "$vae_steps" "${args[@]}" &&
    $PY scripts/pretrain_toy.py --work "$WORK" --eval "${eval_args[@]}" --device "${args[1]}" &&
    $PY scripts/pretrain_toy.py --work "$WORK" --export --export-to "$OUT"
} 2>&1 | grep -v "it/s\]\|s/it\]" | tee -a "$log"
rc=${PIPESTATUS[0]}
cp "$WORK/state.json" "$WORK/eval.json" "$OUT/" 2>/dev/null
exit "$rc"
