#!/usr/bin/env bash
# Runs benchmark.py once per STRATEGY:SEED, all at once, each process pinned to its own core (one thread each),
# for a many-core machine. Waits for all; one JSON lines file per run under OUT_DIR, and each run's directory
# under OUT_DIR/work/STRATEGY-SEED, so that the same command again continues runs that were stopped.
#   experiments/search/parallel.sh EXPERIMENT TRIALS OUT_DIR gp:0 gp:1 tpe:0 random:0 ...
# RUN_TIMEOUT=S stops each run gracefully after S seconds (for a lent machine's time-limited calls);
# FIRST_CORE=N pins the first run to core N (two calls side by side); BENCH_ARGS are passed on to benchmark.py (e.g. "--keep-artifacts all", for retime.py).
set -u
experiment=$1 trials=$2 out=$3
shift 3
mkdir -p "$out"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1
# train (and cache) the task's model once, before the runs race to do it
python3 -c "import yaml, tuner; from tuner.experiment import load_experiment; \
e = load_experiment('$experiment'); e.task_ref().load()" || exit 1
core=${FIRST_CORE:-0}
for run in "$@"; do
  strategy=${run%%:*} seed=${run##*:}
  ${RUN_TIMEOUT:+timeout -s INT $RUN_TIMEOUT} taskset -c $core python3 experiments/search/benchmark.py \
    "$experiment" --strategies "$strategy" --seeds "$seed" --trials "$trials" --out "$out/$strategy-$seed.jsonl" \
    --work "$out/work/$strategy-$seed" ${BENCH_ARGS:-} >> "$out/$strategy-$seed.log" 2>&1 &
  core=$((core + 1))
done
wait
tail -n 1 "$out"/*.log
