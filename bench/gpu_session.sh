#!/usr/bin/env bash
# Runs GPU checks and benchmarks on the GPU machine in one go (device time is scarce), logging to $OUT.
#   bash bench/gpu_session.sh STEP[:TIMEOUT_S] ...
# Extra arguments per benchmark: BENCH_ESM2_ARGS, BENCH_DNABERT_ARGS, BENCH_ENGINE_ARGS.
# Steps: env, models-tests, engine-tests, bench-esm2, bench-dnabert, bench-engine, bench-e2e.
# Carried Python wheels (.whl/, e.g. polars, absent from the GPU image) are installed first.
set -uo pipefail
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
# NVLink multicast stays off on shared hosts.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
LOG="$OUT/session.log"
run_step() {
  local name="$1" limit="$2"; shift 2
  echo "=== $name (limit ${limit}s) $(date -u +%H:%M:%S)" | tee -a "$LOG"
  local t0=$SECONDS
  timeout --signal=TERM --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "=== $name rc=$rc in $((SECONDS - t0))s" | tee -a "$LOG"
  tail -n 15 "$LOG" | sed 's/^/    /'
}
for spec in "$@"; do
  step="${spec%%:*}"; limit="${spec#*:}"; [ "$limit" = "$spec" ] && limit=300
  case "$step" in
    env) run_step env "$limit" bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__, torch.cuda.device_count())"' ;;
    models-tests) run_step models-tests "$limit" env VIRNUCPRO_GPU_REPORT="$OUT/gpu-models.json" \
        python3 -m pytest -m gpu tests/gpu/test_models_gpu.py tests/gpu/test_dnabert_gpu.py -q -p no:cacheprovider -rA ;;
    engine-tests) run_step engine-tests "$limit" env VIRNUCPRO_GPU_REPORT="$OUT/gpu-engine.json" \
        python3 -m pytest -m gpu tests/gpu/test_engine_gpu.py -q -p no:cacheprovider -rA ;;
    bench-esm2) run_step bench-esm2 "$limit" python3 bench/bench_esm2.py --output "$OUT/esm2.json" ${BENCH_ESM2_ARGS:-} ;;
    bench-dnabert) run_step bench-dnabert "$limit" python3 bench/bench_dnabert.py --output "$OUT/dnabert.json" ${BENCH_DNABERT_ARGS:-} ;;
    bench-engine) run_step bench-engine "$limit" python3 bench/bench_engine.py --output "$OUT/engine.json" ${BENCH_ENGINE_ARGS:-} ;;
    *) echo "unknown step $step" | tee -a "$LOG" ;;
  esac
done
