#!/usr/bin/env bash
# `make demo`: submit the mining job, then embedder training on its records, to a local
# Ray cluster with `ray job submit`.
# Starts a head if none is running and stops only what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# The job's `python` must be the project's environment: put it first on the PATH that
# the Ray head (and so every job and worker it starts) inherits.
export PATH="$root/.venv/bin:$PATH"
export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
out="${DEMO_OUT:-$root/out/demo}"

started=0
if ! ray status --address 127.0.0.1:6379 >/dev/null 2>&1; then
  # Token authentication on, with a token of our own (kept out of git under .cache/).
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$root/.cache/ray_auth_token"
  [ -s "$RAY_AUTH_TOKEN_PATH" ] || python -c "import secrets; print(secrets.token_hex(32), end='')" > "$RAY_AUTH_TOKEN_PATH"
  ray start --head --num-cpus 2 --dashboard-host 127.0.0.1 --disable-usage-stats
  started=1
  trap 'ray stop --force >/dev/null 2>&1 || true' EXIT
fi

ray job submit --working-dir . -- python jobs/mine.py --config configs/mine.yaml \
  --output-dir "$out" \
  embed.model="$root/.cache/checkpoints/embedder" judge.model="$root/.cache/checkpoints/judge"

# Then train the embedder on what was mined (2 workers, LoRA, soft labels).
ray job submit --working-dir . -- python jobs/train_embedder.py --config configs/train_embedder.yaml \
  --output-dir "$out/train" data.mined="$out/mined.parquet" model="$root/.cache/checkpoints/embedder"

echo
echo "Mined records:  $out/mined.parquet (and mined.json in UniME-V2's layout)"
echo "Rejected rows:  $out/rejects.parquet"
echo "Summary:        $out/summary.json"
echo "Trained model:  $out/train/model (merged LoRA; steps in $out/train/metrics.jsonl)"
if [ "$started" = 1 ]; then
  echo "Dashboard:      $RAY_ADDRESS (while a cluster runs; this demo stops the head it started)"
else
  echo "Dashboard:      $RAY_ADDRESS"
fi
