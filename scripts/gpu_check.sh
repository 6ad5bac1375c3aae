#!/usr/bin/env bash
# GPU check for rtlab's model core, sized for one H100 in under 8 minutes of wall:
#   1. the CUDA-only tests (FlexAttention == dense path, fused myopic == explicit, exact zero
#      gradients, bf16 + torch.compile smoke), plus the trainer's CUDA test where its
#      dependencies (pydantic, yaml) are installed;
#   2. GPT-2-small (124M, T=1024, bf16, torch.compile) training throughput and MFU per mode,
#      in the order reference, baseline, reasoning n=1, myopic strict fused (the targets), then
#      reasoning n=3, myopic paper fused, myopic strict explicit while the budget lasts. The
#      benchmark rewrites its table after each mode, so a cut-short run still reports.
# Results go to $OUT (if set) or ./gpu_check_out: pytest log, bench_*.md / bench_*.json tables.
# Run from the repository root:  bash scripts/gpu_check.sh   (no install needed: PYTHONPATH)
# Plumbing check without a GPU:   GPU_CHECK_DRY_RUN=1 bash scripts/gpu_check.sh
#   (same steps on CPU with a tiny model, uncompiled, --quick; the GPU tests report as skipped)
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
OUT_DIR="${OUT:-$REPO_ROOT/gpu_check_out}"
mkdir -p "$OUT_DIR"
BUDGET_S="${GPU_CHECK_BUDGET_S:-450}"  # whole script; 30 s margin under 8 minutes
PY="${PYTHON:-python3}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi

log() { echo "[gpu_check $(date -u +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$OUT_DIR/gpu_check.log"; }
left() { echo $((BUDGET_S - SECONDS)); }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }

"$PY" - <<'PYEOF' 2>&1 | tee "$OUT_DIR/env.txt"
import sys
import torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA")
PYEOF
BENCH_ARGS=(--preset gpt2 --device cuda --dtype bfloat16 --compile)
if [ -n "${GPU_CHECK_DRY_RUN:-}" ]; then
  log "dry run on CPU with a tiny model"
  BENCH_ARGS=(--preset tiny --device cpu --dtype bfloat16 --quick --rounds 1 --steps 1)
else
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { log "no CUDA device: nothing to check"; exit 1; }
fi

status=0

# ---- 1/2: tests -------------------------------------------------------------------------------
TESTS=(tests/gpu)
if "$PY" -c "import pydantic, yaml" 2>/dev/null; then
  TESTS+=(tests/execute/test_trainer_gpu.py)
else
  log "LEFT OUT tests/execute/test_trainer_gpu.py: pydantic/yaml not importable by $PY"
fi
if "$PY" -c "import pytest" 2>/dev/null; then
  test_timeout=$(min 180 $(( $(left) - 240 )))  # keep >= 240 s for the benchmark
  if [ "$test_timeout" -ge 30 ]; then
    log "1/2 pytest -m gpu ${TESTS[*]} (timeout ${test_timeout}s)"
    timeout -k 5 "$test_timeout" "$PY" -m pytest -m gpu "${TESTS[@]}" -q -p no:cacheprovider \
      --durations=10 2>&1 | tee "$OUT_DIR/pytest_gpu.txt"
    test_rc=${PIPESTATUS[0]}
    log "pytest exit code $test_rc$([ "$test_rc" -eq 124 ] && echo ' (timed out)')"
    [ "$test_rc" -eq 0 ] || status=1
  else
    log "1/2 tests skipped: only $(left)s left"
    status=1
  fi
else
  log "1/2 LEFT OUT: pytest is not importable by $PY (pip install pytest to run the GPU tests)"
  status=1
fi

# ---- 2/2: benchmark ---------------------------------------------------------------------------
bench_timeout=$(( $(left) - 5 ))
if [ "$bench_timeout" -ge 60 ]; then
  MODES="reference,baseline,reasoning n=1,myopic strict fused,reasoning n=3,myopic paper fused,myopic strict explicit"
  log "2/2 GPT-2-small benchmark (timeout ${bench_timeout}s): $MODES"
  # --deadline-s stops it starting a mode it cannot finish; timeout is the backstop
  timeout -k 10 "$bench_timeout" "$PY" benchmarks/bench_model.py "${BENCH_ARGS[@]}" \
    --modes "$MODES" --deadline-s $((bench_timeout - 15)) --out "$OUT_DIR/bench" \
    2>&1 | tee "$OUT_DIR/bench.txt"
  bench_rc=${PIPESTATUS[0]}
  log "benchmark exit code $bench_rc$([ "$bench_rc" -eq 124 ] && echo ' (timed out; modes finished are in the table)')"
  [ "$bench_rc" -eq 0 ] || status=1
  cat "$OUT_DIR"/bench/bench_*.md 2>/dev/null
else
  log "2/2 benchmark skipped: only $(left)s left"
  status=1
fi

log "done in ${SECONDS}s, status $status"
exit $status
