#!/usr/bin/env bash
# The CNN half of issue 15 on a quiet machine: plantvillage-cnn on ../shared/data/plantvillage34
# (34 classes, one fixed 70/15/15 split with split seed 0), purenn then PyTorch on the same arrays,
# for training seeds 0, 1 and 2; the time-to-accuracy plot of seed 0; the seeds' comparison table.
#
#   bash benchmarks/plantvillage34_cnn.sh            # from the repository root, venv active
#   RUNS=/work/runs SEEDS="0 1 2" bash benchmarks/plantvillage34_cnn.sh
#
# Nothing else may run meanwhile: the time-to-accuracy comparison needs both frameworks timed on
# the same idle machine with the same threads, one run after the other. About 30 min per
# framework and seed on 2 cores (seed 0 on an idle AMD EPYC: purenn 28 min, PyTorch 28 min plus
# its side-by-side replay of the first epoch), so about 3 h for three seeds. Re-running the
# script skips every finished step and resumes an interrupted purenn run.
set -euo pipefail

DATA=${DATA:-../shared/data/plantvillage34}
RUNS=${RUNS:-runs}
SEEDS=${SEEDS:-0 1 2}
THREADS=${THREADS:-2}
export PYTHONPATH=${PYTHONPATH:-$PWD}

lscpu | grep 'Model name'
echo "load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg) (should be near 0)"

run_dir() { if [ "$1" = 0 ]; then echo "$RUNS/pv34-cnn"; else echo "$RUNS/pv34-cnn-seed$1"; fi; }

for seed in $SEEDS; do
  out=$(run_dir "$seed")
  if [ -f "$out/report.json" ]; then
    echo "purenn seed $seed: done ($out)"
  elif [ -f "$out/config.json" ]; then
    python -m purenn train --resume "$out" --threads "$THREADS"
  else
    python -m purenn train "$DATA" --preset plantvillage-cnn --epochs 20 \
      --val-fraction 0.15 --test-fraction 0.15 --seed "$seed" --split-seed 0 \
      --threads "$THREADS" --out "$out"
  fi
  if [ -f "$out/torch-reference/report.json" ]; then
    echo "PyTorch seed $seed: done ($out/torch-reference)"
  else
    python benchmarks/torch_reference.py "$out" --threads "$THREADS"
  fi
done

first=$(run_dir "$(echo "$SEEDS" | cut -d' ' -f1)")
python benchmarks/time_to_accuracy.py "$first" --out docs/img/plantvillage34-cnn-time-to-accuracy.png
runs=()
for seed in $SEEDS; do runs+=("$(run_dir "$seed")"); done
python benchmarks/compare_seeds.py "${runs[@]}" --plot docs/img/plantvillage34-cnn-seeds.png
python - "${runs[@]}" <<'EOF'
# Peak memory, images/s and wall time of each purenn run, from its report.json.
import json
import sys

for run in sys.argv[1:]:
    r = json.load(open(f"{run}/report.json"))["run"]
    print(
        f"{run}: peak memory {r['peak_memory_mb']:.0f} MB, {r['images_per_sec']:.1f} training "
        f"images/s, training {r['training_seconds'] / 60:.1f} min, whole run "
        f"{r['wall_seconds'] / 60:.1f} min"
    )
EOF
