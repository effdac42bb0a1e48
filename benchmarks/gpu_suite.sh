#!/usr/bin/env bash
# Every GPU figure of benchmarks/README.md in one command: one H100/H200, no internet, under 40 minutes.
# Random-weight Qwen2.5 shapes (no weights can be downloaded there); each step is its own process.
#
#   update   PaW vs GRPO update time and peak memory, Qwen2.5-1.5B, LoRA (bf16) and QLoRA (nf4),
#            and HF decode ms/step against the weight-reading floor         (update_step.py)
#   qlora7b  the Qwen2.5-7B QLoRA update: peak memory                       (update_step.py)
#   vllm     vLLM decode ms/step, Qwen2.5-1.5B shape, batch 64 x 512-token prompts; a skip note when
#            `import vllm` fails                                            (vllm_decode.py)
#   fit      a 2-iteration `paw fit` of a Qwen2.5-0.5B shape with QLoRA on CUDA: wall time, peak
#            memory, success and losses per iteration                      (fit_qlora.py)
#   ddp      the quickstart, generate actor, on every visible GPU (one process each): HF vs one vLLM
#            engine per process (its own GPU, vllm_gpu_memory_utilization of it, asleep during the
#            update); with one GPU that is one process (NCCL allows one rank per GPU), so the
#            multi-process launch itself is only checked by the dry run    (ddp.py)
#
# Usage: bash benchmarks/gpu_suite.sh [--dry-run] [--only update,qlora7b,vllm,fit,ddp] [--out FILE]
#   --dry-run  the same steps on CPU with tiny shapes (a minute or two): checks the script, measures nothing
#   --only     a comma list of steps (default: all five, in the order above)
#   --out      the results file (default benchmarks/results.json; a dry run's default is a temp file);
#              every step appends its report there
# The interpreter is $PYTHON, else .venv/bin/python when present, else python3. Each step's log goes to
# $OUT (when set: the device tool brings $OUT back) or to a temp folder, and the results file is copied
# to $OUT/results.json after every step. The script installs nothing, except the bitsandbytes wheel from
# wheels/ when `import bitsandbytes` fails. Exit status: 0 when every step succeeded, else 1.
set -u
cd "$(dirname "$0")/.."

DRY_RUN=0
ONLY="update,qlora7b,vllm,fit,ddp"
RESULTS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --only) ONLY="$2"; shift ;;
    --out) RESULTS="$2"; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown argument $1; see: bash benchmarks/gpu_suite.sh --help" >&2; exit 2 ;;
  esac
  shift
done
for step in ${ONLY//,/ }; do
  case "$step" in update|qlora7b|vllm|fit|ddp) ;; *) echo "unknown step $step; choose from update,qlora7b,vllm,fit,ddp" >&2; exit 2 ;; esac
done

if [ -z "$RESULTS" ]; then
  if [ "$DRY_RUN" = 1 ]; then  # a dry run measures nothing: keep it out of the results table
    RESULTS="${TMPDIR:-/tmp}/paw-gpu-suite-dry-run.json"
    rm -f "$RESULTS"
  else
    RESULTS="benchmarks/results.json"
  fi
fi
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LOGS="${OUT:-$(mktemp -d -t paw-gpu-suite-XXXXXX)}"
mkdir -p "$LOGS" "$(dirname "$RESULTS")"

if ! "$PYTHON" -c "import bitsandbytes" >/dev/null 2>&1; then
  wheel=$(ls wheels/bitsandbytes-*.whl 2>/dev/null | head -n 1)
  if [ -n "$wheel" ]; then
    echo "bitsandbytes is not importable: installing $wheel (--no-deps)"
    "$PYTHON" -m pip install -q --no-deps "$wheel"
  else
    echo "warning: bitsandbytes is not importable and wheels/ holds no bitsandbytes wheel: the QLoRA steps will fail" >&2
  fi
fi
PREFLIGHT=$(mktemp -t paw-gpu-suite-preflight-XXXXXX)
if ! "$PYTHON" -c "import paw_lightning.envs, paw_lightning.callbacks, lightning, peft, jsonargparse, gymnasium, textworld" 2>"$PREFLIGHT"; then
  tail -n 3 "$PREFLIGHT" >&2
  echo "paw_lightning or one of its dependencies is missing for $PYTHON: install the package with" \
       "\`$PYTHON -m pip install --no-deps --no-build-isolation -e .\` and the wheels listed in benchmarks/README.md" >&2
  exit 2
fi
rm -f "$PREFLIGHT"

if [ "$DRY_RUN" = 1 ]; then
  DEVICE=(--device cpu)
  SMALL_UPDATE=(--shape tiny --batch 2 --prompt 16 --action 8 --obs 8 --lora_rank 4 --steps 1
                --decode_batch 2 --decode_prompt 8 --decode_steps 2)
  ARGS_update=("${SMALL_UPDATE[@]}" --modes lora,qlora,decode --budget 40)
  ARGS_qlora7b=("${SMALL_UPDATE[@]}" --modes qlora)
  ARGS_vllm=(--shape tiny --batch 2 --prompt 8 --steps 2)
  POOL='{"challenge": "tw-coin_collector", "settings": {"level": 3}, "num_train": 3, "num_eval": 2, "progress": false}'
  ARGS_fit=(--shape tiny --lora_rank 4 -- --data.num_groups=2 --data.group_size=2 --data.max_steps=3
            --data.mini_batch_size=8 "--data.env_kwargs=$POOL")
  # 2 gloo processes with a vLLM engine each (hf too when vLLM is missing)
  ARGS_ddp=(--processes 2 --iterations 1 --num_groups 1 --actor generate
            --engines "$("$PYTHON" -c 'import importlib.util as u; print("vllm" if u.find_spec("vllm") else "hf")')"
            -- --data.group_size=2 --data.max_steps=2 --data.max_new_tokens=8 "--data.env_kwargs=$POOL")
  LIMIT=300
else
  DEVICE=(--device cuda)
  # --budget: the same 8-row mini-batch in micro-batches of 2 rows (2 x 2816 tokens)
  ARGS_update=(--shape qwen2.5-1.5b --modes lora,qlora,decode --budget 5632)
  ARGS_qlora7b=(--shape qwen2.5-7b --modes qlora)
  ARGS_vllm=(--shape qwen2.5-1.5b)
  ARGS_fit=(--shape qwen2.5-0.5b)
  ARGS_ddp=(--processes "$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))')" --iterations 3
            --actor generate --engines "$("$PYTHON" -c 'import importlib.util as u; print("hf,vllm" if u.find_spec("vllm") else "hf")')")
  LIMIT=900
fi
SCRIPT_update=benchmarks/update_step.py
SCRIPT_qlora7b=benchmarks/update_step.py
SCRIPT_vllm=benchmarks/vllm_decode.py
SCRIPT_fit=benchmarks/fit_qlora.py
SCRIPT_ddp=benchmarks/ddp.py

SUITE_START=$(date +%s)
SUMMARY=()
FAILED=0
for step in ${ONLY//,/ }; do
  script_var="SCRIPT_$step"
  args_var="ARGS_$step[@]"
  # --device and --out go first: fit_qlora.py hands whatever follows a `--` on to paw fit
  cmd=("$PYTHON" "${!script_var}" "${DEVICE[@]}" --out "$RESULTS" "${!args_var}")
  echo "== $step: ${cmd[*]}"
  start=$(date +%s)
  timeout "$LIMIT" "${cmd[@]}" >"$LOGS/$step.log" 2>&1
  rc=$?
  seconds=$(( $(date +%s) - start ))
  if [ "$rc" = 0 ]; then
    echo "   ok in ${seconds} s (log: $LOGS/$step.log)"
  else
    FAILED=1
    [ "$rc" = 124 ] && echo "   TIMED OUT after ${LIMIT} s" || echo "   FAILED (exit $rc) after ${seconds} s"
    tail -n 25 "$LOGS/$step.log" | sed 's/^/   | /'
  fi
  SUMMARY+=("$step=$rc:$seconds")
  [ -n "${OUT:-}" ] && [ -f "$RESULTS" ] && cp "$RESULTS" "$OUT/results.json"
done

# One closing report: what ran, how long, how it ended, and the software it ran on.
"$PYTHON" - "$RESULTS" "$DRY_RUN" "$(( $(date +%s) - SUITE_START ))" "${SUMMARY[@]}" <<'PY'
import json, platform, sys, time
from importlib import metadata
from pathlib import Path

results, dry_run, wall = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
steps = {}
for item in sys.argv[4:]:
    name, status = item.split("=", 1)
    rc, seconds = status.split(":")
    steps[name] = {"exit": int(rc), "ok": rc == "0", "timed_out": rc == "124", "wall_s": int(seconds)}
versions = {"python": platform.python_version()}
for name in ("torch", "transformers", "peft", "lightning", "bitsandbytes", "vllm"):
    try:
        versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        versions[name] = None
import torch

device = torch.cuda.get_device_name() if torch.cuda.is_available() and not dry_run else "cpu"
versions["cuda"] = torch.version.cuda
report = {"device": device, "date": time.strftime("%Y-%m-%d"),
          "suite": {"dry_run": dry_run, "wall_s": wall, "steps": steps, "versions": versions}}
path = Path(results)
merged = json.loads(path.read_text()) if path.exists() else {}
merged.setdefault("runs", []).append(report)
path.write_text(json.dumps(merged, indent=2) + "\n")
print(json.dumps(report["suite"], indent=2))
PY
[ -n "${OUT:-}" ] && cp "$RESULTS" "$OUT/results.json"
echo "suite: $(( $(date +%s) - SUITE_START )) s; results in $RESULTS"
exit "$FAILED"
