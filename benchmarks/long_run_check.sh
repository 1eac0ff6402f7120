#!/usr/bin/env bash
# Why does trainSpanElectra.py log less than bench_train.py's step? (issue 9: the comparison runs
# logged a median 735-839k tokens/s against the benchmark's 1.05M, with data_wait_ms ~0.3). One call:
#   1. bench_train.py --device cuda: the reference, and the same compiled step fed by a DataLoader
#      worker with pinning (loader_vs_in_memory)
#   2. profile_loop.py: host time per phase of the training script's own loop against the GPU's
#      kernel time, over 100 steps after compilation
#   3. trainSpanElectra.py joint small, bf16, --compile, 1,500 steps without validation, as is and with
#      OMP_NUM_THREADS=2, GPU clock and utilisation sampled every 2 s beside them
# Usage: FEATURES=outputs/gpu/features bash benchmarks/long_run_check.sh   (logs under $OUT; ~9 min)
set -u
OUT=${OUT:-outputs/long_run_logs}
FEATURES=${FEATURES:-outputs/gpu/features}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
timeout 260 python3 benchmarks/bench_train.py --device cuda 2>&1 | grep -v -i warn > "$OUT/bench.log"
timeout 150 python3 benchmarks/profile_loop.py --features_dir "$FEATURES" > "$OUT/profile_loop.log" 2>&1
nvidia-smi --query-gpu=timestamp,clocks.sm,utilization.gpu,power.draw --format=csv -l 2 > "$OUT/smi.csv" 2>&1 &
SMI=$!
run() {  # name, then environment settings for the run
    env "${@:2}" timeout 120 python3 trainSpanElectra.py --mode joint --model_size small --bf16 true --compile true \
        --features_dir "$FEATURES" --out_dir "/tmp/long_$1" --overwrite_output_dir true --train_batch_size 128 \
        --max_steps 1500 --log_every 100 --save_every 1500 --eval_every 100000 > "$OUT/$1.log" 2>&1
    python3 -c "import json,sys; [print(r['step'], round(r['tokens_per_sec']), r.get('data_wait_ms')) for r in map(json.loads, open(sys.argv[1])) if 'tokens_per_sec' in r]" \
        "/tmp/long_$1/metrics.jsonl" > "$OUT/$1_speed.txt" 2>&1
}
run default PYTHONUNBUFFERED=1
run omp2 OMP_NUM_THREADS=2  # the main process computes nothing on the CPU: do idle intra-op threads get in its way?
kill $SMI
tail -4 "$OUT/bench.log"; tail -25 "$OUT/profile_loop.log"; paste "$OUT/default_speed.txt" "$OUT/omp2_speed.txt"
