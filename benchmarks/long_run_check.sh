#!/usr/bin/env bash
# Does trainSpanElectra.py now log the benchmark's pace? (issue 9: the comparison runs logged a median
# 735-839k tokens/s against bench_train.py's 1.05M). One device call, about 9 minutes:
#   1. trainSpanElectra.py joint small, bf16, --compile, 1,500 steps without validation, GPU clock and
#      utilisation sampled every 2 s beside it; the same again for 300 steps in a new process, whose
#      step loads from torch.compile's caches (what compare_pretraining's compiling ahead buys: the
#      wall seconds of each run are printed); then ELECTRA's recipe (token masking, no span heads),
#      whose step logged ~15% slower than SpanElectra's in the comparisons with fewer FLOPs
#   2. bench_train.py --device cuda: the reference, and the same compiled step fed by a DataLoader
#      worker (loader_vs_in_memory)
#   3. profile_loop.py: host time per phase of the training script's loop against the GPU's kernel
#      time, and the CUDA launches per step
#   4. bench_loader.py --device cuda: what handing a batch to the loop costs it (plain DataLoader vs slots)
# Usage: FEATURES=outputs/gpu/features bash benchmarks/long_run_check.sh   (logs under $OUT)
#   QUICK=1: only the 1,500-step run and bench_train.py --quick (ours compiled: the reference), about
#   3.5 minutes, to leave a 15-minute device session room for the comparison; TESTS=1 first runs tests/test_gpu.py
#   in 4 pytest-xdist workers (about 1-2 minutes: mostly compiling, on the CPU cores; done before the timed runs,
#   which then have the machine alone), with each compiled step's --compile warnings; MIXCHECK=1 without it the two-stage compiled step alone (Triton 3.6 failed one of its
#   fused reductions on an H100, session 17; training_utils.CompiledStep now compiles it again without
#   Inductor's mix-order reductions: does that build it, and does it then replay as CUDA graphs?)
#   Where FEATURES holds no features yet, they are built first from WT2 (a copy of ../shared/data's
#   wikitext-2 folder, carried: 12 MB) as the earlier measurements' were: WordPiece 30,522, 128 tokens
#   (about 30 s on the GPU machine's 16 cores)
set -u
OUT=${OUT:-outputs/long_run_logs}
FEATURES=${FEATURES:-outputs/gpu/features}
WT2=${WT2:-outputs/gpu_data/wikitext-2}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ ! -f "$FEATURES/meta.json" ]; then
    start=$SECONDS
    python3 create_vocab_SE.py --tokenizer_type BERT --vocab_size 30522 --data_dir "$WT2/wiki.train.tokens" \
        --out_dir "$FEATURES.tok" > "$OUT/features.log" 2>&1 &&
    python3 process.py --tokenizer_dir "$FEATURES.tok" --train_input "$WT2/wiki.train.tokens" \
        --valid_input "$WT2/wiki.valid.tokens" --out_dir "$FEATURES" >> "$OUT/features.log" 2>&1 ||
        { tail -3 "$OUT/features.log"; exit 2; }
    echo "features: $((SECONDS - start)) s wall" | tee -a "$OUT/walls.txt"
fi
speeds() {  # metrics.jsonl -> step, tokens/s, data_wait_ms, gc_ms, gpu_queued_steps per logged row
    python3 -c "import json,sys; [print(r['step'], round(r['tokens_per_sec']), r.get('data_wait_ms'), r.get('gc_ms'), r.get('gpu_queued_steps')) for r in map(json.loads, open(sys.argv[1])) if 'tokens_per_sec' in r]" "$1"
}
run() {  # name, steps, then extra flags
    local start=$SECONDS
    timeout 110 python3 trainSpanElectra.py --mode joint --model_size small --bf16 true --compile true \
        --features_dir "$FEATURES" --out_dir "/tmp/long_$1" --overwrite_output_dir true --train_batch_size 128 \
        --max_steps "$2" --log_every 100 --save_every 100000 --eval_every 100000 "${@:3}" > "$OUT/train_$1.log" 2>&1
    speeds "/tmp/long_$1/metrics.jsonl" > "$OUT/speed_$1.txt" 2>&1
    echo "$1: $((SECONDS - start)) s wall" | tee -a "$OUT/walls.txt"
}
if [ "${QUICK:-0}" = 1 ] && [ "${TESTS:-0}" = 1 ]; then  # -rA keeps each passed test's log: the --compile lines
    # say which attempt built each compiled step, so MIXCHECK needs no run of its own here
    start=$SECONDS
    # each worker's Inductor gets a quarter of the cores for its compile pool (by default each takes them all)
    TORCHINDUCTOR_COMPILE_THREADS=4 timeout 240 python3 -m pytest -q -rA -p no:cacheprovider --tb=short -n 4 \
        --dist load tests/test_gpu.py \
        --durations=5 > "$OUT/test_gpu.log" 2>&1
    echo "test_gpu: $((SECONDS - start)) s wall" | tee -a "$OUT/walls.txt"
    grep -e "--compile:" "$OUT/test_gpu.log" | sort | uniq -c | cut -c1-400
    grep -e "^PASSED" -e "^FAILED" -e "^ERROR" -e " passed" -e " failed" "$OUT/test_gpu.log" | tail -30
fi
nvidia-smi --query-gpu=timestamp,clocks.sm,utilization.gpu,power.draw --format=csv -l 2 > "$OUT/smi.csv" 2>&1 &
SMI=$!
run se 1500
if [ "${QUICK:-0}" = 1 ]; then  # the issue-9 figure alone, about 3.5 minutes: the run above against the benchmark
    kill $SMI
    timeout 150 python3 benchmarks/bench_train.py --device cuda --quick 2>&1 | grep -v -i warn > "$OUT/bench.log"
    if [ "${MIXCHECK:-0}" = 1 ] && [ "${TESTS:-0}" != 1 ]; then  # the two-stage step: which attempt built it (-rA shows a pass's log)
        timeout 200 python3 -m pytest -q -rA -p no:cacheprovider --tb=line \
            "tests/test_gpu.py::test_compiled_steps_replay_as_cuda_graphs[two_stage]" > "$OUT/mix_order_check.log" 2>&1
        grep -e "--compile:" -e "passed" -e "failed" "$OUT/mix_order_check.log" | cut -c1-400
    fi
    cat "$OUT/walls.txt"; cat "$OUT/speed_se.txt"; tail -3 "$OUT/bench.log"
    exit 0
fi
run se_cached 300
run electra 1500 --masking token --use_sbo false --use_span_head false
kill $SMI
timeout 220 python3 benchmarks/bench_train.py --device cuda 2>&1 | grep -v -i warn > "$OUT/bench.log"
timeout 90 python3 benchmarks/profile_loop.py --features_dir "$FEATURES" > "$OUT/profile_loop.log" 2>&1
timeout 40 python3 benchmarks/bench_loader.py --device cuda > "$OUT/bench_loader.log" 2>&1
cat "$OUT/walls.txt"; paste "$OUT/speed_se.txt" "$OUT/speed_electra.txt"; tail -3 "$OUT/bench.log"
tail -30 "$OUT/profile_loop.log"; tail -4 "$OUT/bench_loader.log"
