#!/usr/bin/env bash
# benchmarks/gpu_check.sh: ONE prepared GPU check of training speed (issue 5), for a machine with no network.
#
# What it runs (each part under its own timeout; a part's failure or timeout never stops the others; the
# whole script stays inside BUDGET_S = 570 s, i.e. < 10 minutes):
#   env         nvidia-smi, python/torch/transformers/datasets/pyarrow/fsspec versions
#   install     carried wheels from .whl/, only for packages the machine lacks (or has older), into /tmp/site
#   throughput  benchmarks/throughput.py, ViT-B/16 (random weights), bf16, finetune batch 256, FLYP vs ARF
#               (1 pair/image): variants base (SDPA, fused AdamW), ckpt (eager-attn/nosync: measured 2026-11-27)
#   compile     the same with torch.compile (separate part: a hang or slow compile cannot eat the rest)
#   precision   benchmarks/precision.py: ARF 20 steps from one init on the same batches, bf16 autocast vs fp32
#   loader      benchmarks/loader.py: the trainer's data path at 224x224, batch 256, 8 and 15 workers,
#               compared with the throughput part's training images/s
#   peer        benchmarks/peer_step.py: anchorclip FLYP / ARF vs open_clip's train_one_epoch, ViT-B/16 bf16,
#               batch 128, each side in its own process, alternated (2 rounds); open_clip from the carried
#               wheel (see --prepare-wheels; without it only the anchorclip sides run)
#   peer_compile  the same with torch.compile on both sides (1 round, FLYP and open_clip)
#   miniworld   examples/run_anchor_ft.py --method flyp / --method arf, 200 steps, bf16, a separate output dir
#               each, if anchorclip/assets/miniclip (and minicaptioner for ARF) exist; else skipped
# Output: ONE JSON, $OUT/gpu_check.json (./gpu_check_out/ when OUT is unset), with every part's status, rc,
# seconds, results and log tail; beside it gpu_check.log (all logs) and the Markdown tables
# (throughput_gpu.md, throughput_gpu_compile.md, loader_gpu.md, precision_gpu.md, peer_step_gpu.md,
# peer_step_gpu_compile.md): 8 files, the device tool's limit. GPU_CHECK_PARTS="peer peer_compile" (a space-separated
# list of part names) runs only those parts (env and install always run): e.g. the peer comparison alone.
#
# ---- How a future session runs it (device tool) -------------------------------------------------------
# 1. Here (network), once: prepare the wheels the GPU image lacks (KINDS.md: it has torch 2.11, transformers
#    5.17, accelerate, peft, huggingface-hub 1.33, tokenizers, safetensors, pyarrow, pandas, xxhash; it lacks
#    datasets, evaluate, dill, multiprocess, faiss-cpu; transformers 5.24 is carried to match this repo):
#        bash benchmarks/gpu_check.sh --prepare-wheels        # -> .whl/ (~33 MB; /.whl/ is in .gitignore)
#    Keep one version of each package in .whl/ (two versions stop the install). datasets 5.2 needs
#    pyarrow >= 24 and fsspec <= 2026.9.0; the image's versions are unknown here: the env part prints them.
#    If the install part fails on pyarrow, add pyarrow==26.0.1 (~42 MB) and drop faiss-cpu (19 MB, only the
#    miniworld ARF run's retrieval needs it) to stay under the 64 MiB that may travel.
# 2. Check here first, at no device cost:   bash benchmarks/gpu_check.sh --cpu-smoke   (< 3 min)
# 3. The call (one call; ~8 min of the 15-minute device budget, leaving time for one rerun of a part):
#        run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
#    (kind left out: nvidia-h100-x1, or nvidia-h200 if no H100 is free; the JSON records which. If
#    anchorclip/assets is ever git-ignored, add "anchorclip/assets" to carry.) Then call give_back.
# 4. Copy the returned files into docs/results/ (throughput_gpu*.md, loader_gpu.md, gpu_check.json) and
#    fill the "GPU results" section of docs/performance.md.
# -------------------------------------------------------------------------------------------------------
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=gpu
case "${1:-}" in
  --cpu-smoke) MODE=cpu-smoke ;;
  --prepare-wheels) MODE=prepare-wheels ;;
  "") ;;
  *) echo "usage: $0 [--cpu-smoke | --prepare-wheels]" >&2; exit 2 ;;
esac
[ "${GPU_CHECK_CPU_SMOKE:-0}" = 1 ] && MODE=cpu-smoke
PY=${PYTHON:-python3}

if [ "$MODE" = prepare-wheels ]; then
  mkdir -p .whl
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19 faiss-cpu==1.15.1 transformers==5.24.0
  # open_clip for benchmarks/peer_step.py only (pure Python, --no-deps: see that script's header).
  "$PY" -m pip download --no-deps -d .whl open_clip_torch==3.3.0
  du -sh .whl && ls .whl
  exit $?
fi

OUT_DIR=${OUT:-$ROOT/gpu_check_out}
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
mkdir -p "$OUT_DIR"
STATUS=$WORK/status.tsv
: >"$STATUS"
START=$(date +%s)
if [ "$MODE" = gpu ]; then
  BUDGET_S=${GPU_CHECK_BUDGET_S:-570}
else
  BUDGET_S=${GPU_CHECK_BUDGET_S:-175}
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export HF_DATASETS_DISABLE_PROGRESS_BARS=1 TORCHINDUCTOR_CACHE_DIR=$WORK/inductor
# On the GPU machine everything (miniworld splits too) is built fresh under $WORK; the CPU smoke run reuses
# this machine's miniworld cache (~/.cache/anchorclip) so that its short miniworld runs can finish.
[ "$MODE" = gpu ] && export ANCHORCLIP_CACHE=$WORK/cache HF_HOME=$WORK/hf

# run_part NAME TIMEOUT_S COMMAND...: log to $WORK/NAME.log, record status, never exit.
run_part() {
  local name=$1 limit=$2
  shift 2
  if [ -n "${GPU_CHECK_PARTS:-}" ] && [ "$name" != env ] && [ "$name" != install ] \
    && [[ " $GPU_CHECK_PARTS " != *" $name "* ]]; then
    printf '%s\tskipped (GPU_CHECK_PARTS)\t-\t0\n' "$name" >>"$STATUS"
    return
  fi
  local left=$((BUDGET_S - ($(date +%s) - START)))
  if [ "$left" -lt 15 ]; then
    printf '%s\tskipped (budget)\t-\t0\n' "$name" >>"$STATUS"
    echo "=== $name: skipped, ${left}s of the budget left"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (timeout ${limit}s): $(printf '%s ' "$@" | tr '\n' ' ' | head -c 240)"
  local t0 rc status
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@" >"$WORK/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout ;;
    *) status=failed ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$(($(date +%s) - t0))" >>"$STATUS"
  tail -n 25 "$WORK/$name.log"
  echo "=== $name: $status (rc $rc, $(($(date +%s) - t0))s)"
}

skip_part() { printf '%s\tskipped (%s)\t-\t0\n' "$1" "$2" >>"$STATUS"; echo "=== $1: skipped ($2)"; }

# ---- env
env_info() {
  nvidia-smi || echo "nvidia-smi: not available"
  uname -a; nproc; free -g 2>/dev/null | head -2
  "$PY" - <<'EOF'
import importlib.metadata as m, sys
print("python", sys.version.split()[0], sys.executable)
for name in ["torch", "transformers", "accelerate", "datasets", "evaluate", "peft", "huggingface-hub", "tokenizers",
             "safetensors", "pyarrow", "fsspec", "dill", "multiprocess", "xxhash", "faiss-cpu", "numpy", "pillow"]:
    try:
        print(f"{name}=={m.version(name)}")
    except m.PackageNotFoundError:
        print(f"{name}: missing")
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
EOF
}
export PY ROOT
run_part env 60 bash -c "$(declare -f env_info); env_info"

# ---- install: carried wheels for what is missing or older; the project itself via PYTHONPATH
install_wheels() {
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "no .whl/ wheels carried"
  else
    local needed
    needed=$("$PY" - <<'EOF'
import glob, importlib.metadata as m, os
from packaging.version import Version
for path in sorted(glob.glob(".whl/*.whl")):
    name, version = os.path.basename(path).split("-")[:2]
    try:
        have = m.version(name.replace("_", "-"))
    except m.PackageNotFoundError:
        have = None
    if have is None or Version(have) < Version(version):
        print(path)
EOF
)
    if [ -n "$needed" ]; then
      echo "installing: $needed"
      # shellcheck disable=SC2086
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $needed \
        || return 1
    else
      echo "every carried package is already present"
    fi
  fi
  PYTHONPATH=$ROOT:/tmp/site "$PY" -c "import transformers, accelerate, datasets, evaluate, anchorclip; \
print('imports ok: transformers', transformers.__version__, 'datasets', datasets.__version__)"
}
run_part install 90 bash -c "$(declare -f install_wheels); install_wheels"
export PYTHONPATH=$ROOT:/tmp/site${PYTHONPATH:+:$PYTHONPATH}

# ---- sizes per mode
if [ "$MODE" = gpu ]; then
  TP_ARGS=(--config vit-b-16 --batch 256 --bf16 --steps 10 --warmup 3)
  TP_VARIANTS=base,ckpt; TP_TIMEOUT=70; TP_BUDGET=50
  CP_METHODS=flyp,arf; CP_TIMEOUT=200; CP_BUDGET=150
  PR_ARGS=(--config vit-b-16 --batch 256 --steps 20 --ckpt); PR_TIMEOUT=90
  LD_ARGS=(--batch 256 --workers 8,15 --methods arf,flyp --batches 6); LD_TIMEOUT=60
  MW_ARGS=(--max_steps 200 --bf16 --save_strategy no --report_to none --disable_tqdm true); MW_TIMEOUT_FLYP=80; MW_TIMEOUT_ARF=120
  PS_ARGS=(--config vit-b-16 --batch 128 --bf16 --steps 10 --warmup 3); PS_ROUNDS=2; PS_TIMEOUT=240
  PC_TIMEOUT=300
  SUFFIX=gpu
else
  TP_ARGS=(--config tiny --batch 8 --no-bf16 --steps 2 --warmup 1)
  TP_VARIANTS=base,nosync,ckpt; TP_TIMEOUT=45; TP_BUDGET=35
  CP_METHODS=flyp; CP_TIMEOUT=70; CP_BUDGET=5
  PR_ARGS=(--config tiny --batch 8 --steps 4); PR_TIMEOUT=60
  LD_ARGS=(--batch 8 --workers 0,1 --methods arf --batches 2); LD_TIMEOUT=45
  MW_ARGS=(--max_steps 2 --per_device_train_batch_size 16 --save_strategy no --report_to none --use_cpu
           --disable_tqdm true)
  MW_TIMEOUT_FLYP=30; MW_TIMEOUT_ARF=30
  PS_ARGS=(--config tiny --batch 16 --steps 2 --warmup 1 --threads 1); PS_ROUNDS=1; PS_TIMEOUT=120
  PC_TIMEOUT=0  # compiling on a shared CPU takes minutes: the smoke run checks the eager path only
  SUFFIX=cpu_smoke
fi
NOTE="gpu_check.sh $MODE"

run_part throughput "$TP_TIMEOUT" "$PY" benchmarks/throughput.py "${TP_ARGS[@]}" --variants "$TP_VARIANTS" \
  --time-budget "$TP_BUDGET" --note "$NOTE" --output "$WORK/throughput_$SUFFIX.json"
run_part compile "$CP_TIMEOUT" "$PY" benchmarks/throughput.py "${TP_ARGS[@]}" --variants compile \
  --methods "$CP_METHODS" --time-budget "$CP_BUDGET" --note "$NOTE" --output "$WORK/throughput_${SUFFIX}_compile.json"
run_part precision "$PR_TIMEOUT" "$PY" benchmarks/precision.py "${PR_ARGS[@]}" --output "$WORK/precision_$SUFFIX.json"
run_part loader "$LD_TIMEOUT" "$PY" benchmarks/loader.py "${LD_ARGS[@]}" --train-json "$WORK/throughput_$SUFFIX.json" \
  --note "$NOTE" --output "$WORK/loader_$SUFFIX.json"

# ---- anchorclip vs open_clip (benchmarks/peer_step.py); without open_clip, the anchorclip sides alone
if "$PY" -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('open_clip') and u.find_spec('open_clip_train')))"
then PS_SIDES=(open_clip flyp arf); PC_SIDES=(open_clip flyp)
else echo "open_clip missing (carry its wheel in .whl/): peer parts time anchorclip only"; PS_SIDES=(flyp arf); PC_SIDES=(flyp)
fi
# The smoke run checks the wiring with one process (tests/test_benchmarks_smoke.py runs the open_clip side).
[ "$MODE" = gpu ] || PS_SIDES=(flyp)
run_part peer "$PS_TIMEOUT" "$PY" benchmarks/peer_step.py "${PS_ARGS[@]}" --rounds "$PS_ROUNDS" \
  --sides "${PS_SIDES[@]}" --output "$WORK/peer_step_$SUFFIX.json"
if [ "$PC_TIMEOUT" -gt 0 ]; then
  run_part peer_compile "$PC_TIMEOUT" "$PY" benchmarks/peer_step.py "${PS_ARGS[@]}" --compile --rounds 1 \
    --sides "${PC_SIDES[@]}" --output "$WORK/peer_step_${SUFFIX}_compile.json"
else
  skip_part peer_compile "CPU smoke run"
fi

ASSETS=$ROOT/anchorclip/assets
if [ -f "$ASSETS/miniclip/config.json" ]; then
  run_part miniworld_flyp "$MW_TIMEOUT_FLYP" "$PY" examples/run_anchor_ft.py --method flyp "${MW_ARGS[@]}" \
    --output_dir "$WORK/mw_flyp"
  if [ -f "$ASSETS/minicaptioner/config.json" ]; then
    run_part miniworld_arf "$MW_TIMEOUT_ARF" "$PY" examples/run_anchor_ft.py --method arf "${MW_ARGS[@]}" \
      --output_dir "$WORK/mw_arf"
  else
    skip_part miniworld_arf "anchorclip/assets/minicaptioner missing"
  fi
else
  skip_part miniworld_flyp "anchorclip/assets/miniclip missing"
  skip_part miniworld_arf "anchorclip/assets/miniclip missing"
fi

# ---- one JSON with everything
"$PY" - "$WORK" "$OUT_DIR" "$MODE" "$START" "$BUDGET_S" <<'EOF'
import datetime, glob, json, os, shutil, sys, time
work, out, mode, start, budget = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
def load(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None
def tail(path, chars=4000):
    try:
        with open(path, errors="replace") as handle:
            return handle.read()[-chars:]
    except OSError:
        return None
parts = {}
for line in open(os.path.join(work, "status.tsv")):
    name, status, rc, seconds = line.rstrip("\n").split("\t")
    parts[name] = {"status": status, "rc": None if rc == "-" else int(rc), "seconds": int(seconds),
                   "log_tail": tail(os.path.join(work, f"{name}.log"), 8000 if name == "env" else 3000)}
suffix = "gpu" if mode == "gpu" else "cpu_smoke"
files = {"throughput": f"throughput_{suffix}.json", "compile": f"throughput_{suffix}_compile.json",
         "loader": f"loader_{suffix}.json", "precision": f"precision_{suffix}.json",
         "peer": f"peer_step_{suffix}.json", "peer_compile": f"peer_step_{suffix}_compile.json"}
for name, file in files.items():
    if name in parts:
        parts[name]["results"] = load(os.path.join(work, file))
for name in ("miniworld_flyp", "miniworld_arf"):
    if name in parts:
        parts[name]["results"] = load(os.path.join(work, name.replace("miniworld", "mw"), "results.json"))
report = {"mode": mode, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
          "total_seconds": int(time.time()) - start, "budget_seconds": budget,
          "all_ok": all(p["status"] in ("ok",) or p["status"].startswith("skipped") for p in parts.values()),
          "parts": parts}
with open(os.path.join(out, "gpu_check.json"), "w") as handle:
    json.dump(report, handle, indent=1, default=str)
with open(os.path.join(out, "gpu_check.log"), "w") as handle:
    for name in parts:
        handle.write(f"\n===== {name}: {parts[name]['status']}\n{tail(os.path.join(work, f'{name}.log'), 10**6) or ''}")
for md in glob.glob(os.path.join(work, "*.md")):
    shutil.copy(md, out)
print(f"\n{'part':<16} {'status':<22} {'s':>5}")
for name, part in parts.items():
    print(f"{name:<16} {part['status']:<22} {part['seconds']:>5}")
print(f"total {report['total_seconds']}s (budget {budget}s); wrote {out}/gpu_check.json")
EOF
