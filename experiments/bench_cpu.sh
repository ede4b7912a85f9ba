#!/usr/bin/env bash
# Every ssl-bench measure on this machine's CPU, as committed in experiments/results/bench_*.md (records in
# experiments/records/bench/). About 40 minutes on 2 cores; run it with the machine otherwise idle.
#
#   bash experiments/bench_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
records=experiments/records/bench
results=experiments/results
mkdir -p "$records"

ssl-bench pipeline --task all --steps 192 --rounds 12 --json "$records/pipeline.json" --table "$results/bench_pipeline.md"
ssl-bench data --json "$records/data.json" --table "$results/bench_data.md"
ssl-bench probe --rounds 2 --json "$records/probe.json" --table "$results/bench_probe.md"
# DeepCluster reclustering every epoch, in the steady state (the first epoch untimed: it decodes the views
# that later passes read from memory, and banks the first training features): the paper's way (a fresh
# feature pass every epoch), then reusing the training steps' features
ssl-bench deepcluster --set pretext.reassign_every=1 --warmup-epochs 1 --epochs 2 \
    --json "$records/deepcluster_paper.json" --table "$results/bench_deepcluster_paper.md"
ssl-bench deepcluster --set pretext.reassign_every=1 --set pretext.reuse_features=true --warmup-epochs 1 --epochs 2 \
    --json "$records/deepcluster_reuse.json" --table "$results/bench_deepcluster_reuse.md"
ssl-bench precision --task all --json "$records/precision.json" --table "$results/bench_precision.md"
ssl-bench threads --task rotation --json "$records/threads.json" --table "$results/bench_threads.md"
# the same with OpenMP's default of spinning waits, for comparison with the passive policy every command sets
OMP_WAIT_POLICY=ACTIVE ssl-bench threads --task rotation --json "$records/threads_active.json" \
    --table "$results/bench_threads_active.md"
