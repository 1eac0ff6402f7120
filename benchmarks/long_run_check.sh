#!/usr/bin/env bash
# Does the compiled joint step hold the benchmark's pace over thousands of steps? (issue 9: the
# 5,500-step comparison runs logged 62-74% of bench_train.py's tokens/s). One device call:
#   1. bench_train.py's ours-bf16-compiled figure (the reference), 2. trainSpanElectra.py joint small,
#   bf16, --compile, 3,000 steps, no validation, GPU clocks/temperature/power sampled every 5 s beside it,
#   3. the same 1,500 steps with validation every 300 steps and --num_workers 8.
# Usage: FEATURES=outputs/gpu/features bash benchmarks/long_run_check.sh   (logs under $OUT)
set -u
OUT=${OUT:-outputs/long_run_logs}
FEATURES=${FEATURES:-outputs/gpu/features}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
timeout 150 python3 benchmarks/bench_train.py --device cuda 2>&1 | tail -3 > "$OUT/bench.log"
nvidia-smi --query-gpu=timestamp,clocks.sm,temperature.gpu,power.draw,utilization.gpu --format=csv -l 5 \
    > "$OUT/smi.csv" 2>&1 &
SMI=$!
run() {  # name, steps, extra flags
    timeout 200 python3 trainSpanElectra.py --mode joint --model_size small --bf16 true --compile true \
        --features_dir "$FEATURES" --out_dir "/tmp/long_$1" --overwrite_output_dir true --train_batch_size 128 \
        --max_steps "$2" --log_every 100 --save_every "$2" "${@:3}" > "$OUT/$1.log" 2>&1
    python3 -c "import json,sys; [print(r['step'], round(r['tokens_per_sec'])) for r in map(json.loads, open(sys.argv[1])) if 'tokens_per_sec' in r]" \
        "/tmp/long_$1/metrics.jsonl" > "$OUT/$1_speed.txt" 2>&1
}
run noeval 3000 --eval_every 100000
run eval_w8 1500 --eval_every 300 --eval_batches 4 --num_workers 8
kill $SMI
tail -2 "$OUT/bench.log"; paste "$OUT/noeval_speed.txt" | awk 'NR%5==0'; awk 'NR%5==0' "$OUT/eval_w8_speed.txt"
