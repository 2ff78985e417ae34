#!/usr/bin/env bash
# `make demo`: submit the mining job, embedder and reranker training on its records, and an
# evaluation of the base and trained checkpoints on an MMEB-mini, to a local Ray cluster
# with `ray job submit`.
# Starts a head if none is running and stops only what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# The job's `python` must be the project's environment: put it first on the PATH that
# the Ray head (and so every job and worker it starts) inherits.
export PATH="$root/.venv/bin:$PATH"
export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
out="${DEMO_OUT:-$root/out/demo}"

logs="$out/logs"
mkdir -p "$logs"
steps=10 step=0
# One line on the terminal per step; the step's own output (job logs, vLLM's config dumps,
# Ray Data's progress) goes to $logs/<n>-<name>.log, shown only if the step fails.
run() {
  local name=$1 began=$SECONDS log
  shift
  step=$((step + 1))
  log="$logs/$step-$name.log"
  printf '[%2d/%d] %-28s ' "$step" "$steps" "$name"
  if "$@" >"$log" 2>&1; then
    echo "done in $((SECONDS - began)) s"
  else
    echo "FAILED after $((SECONDS - began)) s; the end of $log:"
    tail -n 40 "$log"
    exit 1
  fi
}

started=0
if ! ray status --address 127.0.0.1:6379 >/dev/null 2>&1; then
  # Token authentication on, with a token of our own (kept out of git under .cache/).
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$root/.cache/ray_auth_token"
  [ -s "$RAY_AUTH_TOKEN_PATH" ] || python -c "import secrets; print(secrets.token_hex(32), end='')" > "$RAY_AUTH_TOKEN_PATH"
  # The serving app's API key: Serve replicas read it from the environment the head starts in.
  [ -s .cache/unime_api_key ] || python -c "import secrets; print(secrets.token_urlsafe(24), end='')" > .cache/unime_api_key
  export UNIME_API_KEY="$(cat .cache/unime_api_key)"
  steps=$((steps + 1))
  run "start a Ray head" ray start --head --num-cpus 2 --dashboard-host 127.0.0.1 --disable-usage-stats
  started=1
  trap 'ray stop --force >/dev/null 2>&1 || true' EXIT
fi

images=200  # easy-VQA training images: 3 queries each
run "mine" ray job submit --working-dir . -- python jobs/mine.py --config configs/mine.yaml \
  --output-dir "$out" corpus.num_images=$images \
  embed.model="$root/.cache/checkpoints/embedder" judge.model="$root/.cache/checkpoints/judge"

# Then train the embedder on what was mined (2 workers). The demo's checkpoints have random
# weights, the judge's too, so its soft labels carry nothing to learn (see `make replicate`):
# here the embedder learns from scratch (every weight) with InfoNCE over in-batch and the
# mined hard negatives, the VLM2Vec-plus-mined-negatives row of the paper's ablation.
run "train the embedder" ray job submit --working-dir . -- python jobs/train_embedder.py \
  --config configs/train_embedder.yaml \
  --output-dir "$out/train" data.mined="$out/mined.parquet" model="$root/.cache/checkpoints/embedder" \
  finetune=full loss=info_nce info_nce_hard_negatives=true per_worker_batch_size=16 gradcache_chunk_size=null \
  optim.lr=0.0005 optim.warmup_steps=30 optim.max_steps=400 checkpoint.every_steps=200

# And the reranker on the same records (pairwise Yes/No + listwise "Ans: (i)").
run "train the reranker" ray job submit --working-dir . -- python jobs/train_reranker.py \
  --config configs/train_reranker.yaml \
  --output-dir "$out/rerank" data.mined="$out/mined.parquet" model="$root/.cache/checkpoints/reranker"

# Finally, MMEB-protocol evaluation on an MMEB-mini of real data: the base embedder, then
# the trained embedder with the trained reranker on its top 5, then both side by side.
run "build an MMEB-mini" python -m unime_ray.eval.build_mini "$out/mmeb_mini"
run "evaluate the base embedder" ray job submit --working-dir . -- python jobs/evaluate.py \
  --config configs/evaluate.yaml \
  --tasks "$out/mmeb_mini" --model "$root/.cache/checkpoints/embedder" --output-dir "$out/eval/base" label=base
run "evaluate the trained models" ray job submit --working-dir . -- python jobs/evaluate.py \
  --config configs/evaluate.yaml \
  --tasks "$out/mmeb_mini" --model "$out/train/model" --reranker "$out/rerank/model" \
  --output-dir "$out/eval/trained" label=trained
run "compare" python -m unime_ray.eval.report "$out/eval/base/results.json" "$out/eval/trained/results.json" \
  --output-dir "$out/eval"

# Serving: index the corpus' targets with the trained embedder, deploy serve/config.yaml
# (paths made absolute), wait until every deployment is ready, and query it over HTTP.
run "index the targets" ray job submit --working-dir . -- python jobs/build_index.py --output-dir "$out/index" \
  embed.model="$out/train/model" corpus.num_images=$images
python -m unime_ray.serving.config serve/config.yaml "$out/serve.yaml" index.path="$out/index" \
  embedder.model="$out/train/model" reranker.model="$out/rerank/model" >"$logs/serve-config.log" 2>&1
deploy() {  # ready once every deployment answers, its model warmed (GET /readyz)
  serve deploy "$out/serve.yaml"
  for _ in $(seq 150); do curl -sf http://127.0.0.1:8000/readyz && return 0; sleep 2; done
  serve status
  return 1
}
run "deploy the service" deploy
search='{"text": "a red circle", "instruction": "Find me an everyday image that matches the given caption:", "top_k": 5, "rerank": true}'
run "search" curl -sS -o "$out/search.json" -H "Authorization: Bearer ${UNIME_API_KEY:-<key>}" \
  -H 'Content-Type: application/json' -d "$search" http://127.0.0.1:8000/v1/search

echo
python jobs/demo_summary.py "$out"
echo
echo "Mined records:  $out/mined.parquet (and mined.json in UniME-V2's layout)"
echo "Rejected rows:  $out/rejects.parquet"
echo "Summary:        $out/summary.json"
echo "Trained model:  $out/train/model (every weight trained; steps in $out/train/metrics.jsonl)"
echo "Reranker:       $out/rerank/model (merged LoRA; steps in $out/rerank/metrics.jsonl)"
echo "Evaluation:     $out/eval/comparison.md and comparison.png (each run's results.json under $out/eval/)"
echo "Logs:           $logs/ (one file per step)"
echo "Search index:   $out/index (served by $out/serve.yaml; API docs at http://127.0.0.1:8000/docs)"
echo "Call it:        curl -H \"Authorization: Bearer \$(cat .cache/unime_api_key)\" -H 'Content-Type: application/json' \\"
echo "                  -d '{\"text\": \"a red circle\", \"top_k\": 5, \"rerank\": true}' http://127.0.0.1:8000/v1/search"
if [ "$started" = 1 ]; then
  echo "Dashboard:      $RAY_ADDRESS (while a cluster runs; this demo stops the head it started,"
  echo "                and the service with it: start a head yourself to keep them up)"
else
  echo "Dashboard:      $RAY_ADDRESS"
fi
