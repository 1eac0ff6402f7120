#!/usr/bin/env bash
# The GPU checks of one device session, in one go (logs to ${OUT:-outputs/gpu_checks}):
#   1. benchmarks/bench_train.py at batch 128 (every variant, JSON on the last line)
#   2. trainSpanElectra.py --mode joint --model_size small --bf16 --compile at batch 128 on FEATURES
#      (its logged tokens_per_sec is compared with the benchmark's)
#   3. tests/test_gpu.py (every script's CUDA path, bf16, --compile, no host syncs in the step)
#   4. a fine-tuning run on the bundled MRPC slice (steps/s)
# Usage: FEATURES=outputs/gpu/features bash benchmarks/gpu_checks.sh   (issue 9's one-call check is now
#   benchmarks/long_run_check.sh QUICK=1 TESTS=1; this one also times fine-tuning)
set -u
OUT=${OUT:-outputs/gpu_checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
FEATURES=${FEATURES:-outputs/gpu/features}
STEPS=${STEPS:-300}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/device.txt"

timeout "${BENCH_TIMEOUT:-180}" python3 benchmarks/bench_train.py --device cuda 2>&1 | grep -v Warning | tee "$OUT/bench_train.log" | tail -12

timeout "${TRAIN_TIMEOUT:-110}" python3 trainSpanElectra.py --mode joint --model_size small --bf16 true --compile true \
    --features_dir "$FEATURES" --out_dir /tmp/gpu_joint --train_batch_size 128 --max_steps "$STEPS" --log_every 50 \
    --eval_every "$STEPS" --save_every "$STEPS" --eval_batches 4 --overwrite_output_dir true > "$OUT/train.log" 2>&1
tail -3 "$OUT/train.log"
cp /tmp/gpu_joint/metrics.jsonl "$OUT/train_metrics.jsonl" 2>/dev/null && \
    python3 -c "import json; rows=[json.loads(l) for l in open('$OUT/train_metrics.jsonl')]; [print(r['step'], round(r['tokens_per_sec']), round(r['loss'],3), r.get('disc_auc')) for r in rows if 'tokens_per_sec' in r]"

# 4 xdist workers, each compiling with a quarter of the cores (one at a time, its 25 tests outlast 170 s)
TORCHINDUCTOR_COMPILE_THREADS=4 timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -p no:cacheprovider -n 4 --dist load \
    tests/test_gpu.py --durations=5 > "$OUT/test_gpu.log" 2>&1
tail -15 "$OUT/test_gpu.log"

if [ -d /tmp/gpu_joint/discriminator ]; then
    timeout "${FT_TIMEOUT:-60}" python3 finetune_SE.py --model_dir /tmp/gpu_joint/discriminator --task_dir data/glue/MRPC \
        --out_dir /tmp/gpu_ft --num_train_epochs 1 --device cuda > "$OUT/finetune.log" 2>&1
    python3 -c "import json; r=json.load(open('/tmp/gpu_ft/results.json')); print('finetune', r['per_seed'][0]['train_steps_per_sec'], 'steps/s, batch', r['train_batch_size'], r['main_metric'], r['eval_' + r['main_metric']] if 'eval_' + r['main_metric'] in r else '')" 2>&1 | tail -1
fi
