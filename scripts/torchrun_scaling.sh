#!/usr/bin/env bash
# One GPU against torchrun on N GPUs, same input, same model (issue 13: wall-clock efficiency).
#   bash scripts/torchrun_scaling.sh OUT_DIR [N_GPUS] [N_SEQUENCES] [MODEL]
# Writes OUT_DIR/one, OUT_DIR/many (reports), one.log, many.log and scaling.txt (wall clocks and each run's
# v1.0/v2.0 seconds). Efficiency = one-GPU wall / (N × N-GPU wall).
set -uo pipefail
out=${1:?output folder}; gpus=${2:-2}; n=${3:-10000}; model=${4:-demo-3B}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0  # NVLink multicast stays off on the lent machines
python3 -m core.bench --workloads realistic --n "$n" --write-fasta /tmp/scaling.fasta > /dev/null
now() { python3 -c 'import time; print(time.time())'; }
t0=$(now)
CUDA_VISIBLE_DEVICES=0 python3 -m core compare /tmp/scaling.fasta --model "$model" --out "$out/one" > "$out/one.log" 2>&1
t1=$(now)
python3 -m torch.distributed.run --nproc-per-node "$gpus" -m core compare /tmp/scaling.fasta --model "$model" \
    --out "$out/many" > "$out/many.log" 2>&1
t2=$(now)
python3 - "$out" "$gpus" "$t0" "$t1" "$t2" <<'PY' | tee "$out/scaling.txt"
import json, sys
out, gpus, t0, t1, t2 = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:])
one, many = (json.load(open(f"{out}/{name}/summary.json")) for name in ("one", "many"))
wall_one, wall_many = t1 - t0, t2 - t1
compute = lambda s: s["seconds"]["v1"] + s["seconds"]["v2"]
print(f"one GPU: wall {wall_one:.1f} s, v1.0 + v2.0 {compute(one):.1f} s, verdict {one['verdict']}")
print(f"{gpus} GPUs (torchrun): wall {wall_many:.1f} s, v1.0 + v2.0 {compute(many):.1f} s (slowest rank), "
      f"verdict {many['verdict']}, world size {many['world_size']}")
print(f"efficiency: wall clock {wall_one / (gpus * wall_many):.1%}, compute {compute(one) / (gpus * compute(many)):.1%}")
print(f"min cosine {one['cosine']['min']} vs {many['cosine']['min']}; same ids: "
      f"{one['n_sequences'] == many['n_sequences']}")
PY
