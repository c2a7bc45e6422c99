# make demo: set up .venv if needed and run the end-to-end job on the sample data shipped in the package.
# make test: the test suite (CI runs this through .ci/run).
# make gpu-check: the GPU check (bench/gpu_check.sh, docs/cuda.md).
# make bench: benchmarks, and the tests marked long; results go to docs/benchmarks.md by hand, with the command, date and machine.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := demo
SAMPLES := $(wildcard pnlm/sample_data/*.jsonl.gz)
GENERIC_SAMPLES := pnlm/sample_data/austen_pride_and_prejudice.jsonl.gz pnlm/sample_data/bierce_devils_dictionary.jsonl.gz
DOMAIN_SAMPLE := pnlm/sample_data/shakespeare_hamlet.jsonl.gz

ifeq ($(shell uname -s),Darwin)
  PLATFORM_DEPS := mlx torch
else
  # torch 2.13.0 is the CPU wheel on this machine's disk; unpinned, pip would pull a CUDA build of several GB.
  PLATFORM_DEPS := 'mlx[cpu]' torch==2.13.0
endif

.PHONY: demo test bench gpu-check clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[torch,mlx,data,hf,report,test]' $(PLATFORM_DEPS)
	@touch $(STAMP)

demo: $(STAMP)
	@rm -rf $(DEMO) && mkdir -p $(DEMO)
	@echo "== 1. train a tokenizer on the sample books shipped in the package"
	$(BIN)/pnlm data tokenizer $(SAMPLES) --vocab-size 2048 --out $(DEMO)/tokenizer
	@echo "== 2. token stores: Austen and Bierce as the generic set, Hamlet (by scene) as the domain (context 256)"
	$(BIN)/pnlm data prepare $(GENERIC_SAMPLES) --tokenizer $(DEMO)/tokenizer --context 256 --out $(DEMO)/generic
	$(BIN)/pnlm data prepare $(DOMAIN_SAMPLE) --tokenizer $(DEMO)/tokenizer --context 256 --valid-fraction 0.1 \
	    --test-fraction 0.1 --out $(DEMO)/hamlet
	@echo "== 3. pretrain a tiny model on the generic set with PyTorch (about 40 s)"
	$(BIN)/pnlm pretrain --method slm --model tiny --data $(DEMO)/generic --backend torch --steps 400 --batch-size 8 \
	    --lr 2e-3 --out $(DEMO)/pretrain
	@echo "== 4. how well it knows Hamlet before fine-tuning, beside a unigram model of the generic set"
	$(BIN)/pnlm eval $(DEMO)/pretrain/latest --data $(DEMO)/hamlet --unigram $(DEMO)/generic --backend torch
	@echo "== 5. fine-tune LoRA adapters on Hamlet with MLX, stopping when validation stops improving"
	$(BIN)/pnlm finetune $(DEMO)/pretrain/latest --data $(DEMO)/hamlet --backend mlx --lora-rank 16 --lr 2e-3 \
	    --steps 300 --eval-every 20 --patience 3 --out $(DEMO)/hamlet-lora
	@echo "== 6. evaluate base + adapters with MLX, fuse them, evaluate the fused model with PyTorch"
	$(BIN)/pnlm eval $(DEMO)/hamlet-lora/best --data $(DEMO)/hamlet --backend mlx
	$(BIN)/pnlm fuse $(DEMO)/hamlet-lora/best --out $(DEMO)/hamlet-model
	$(BIN)/pnlm eval $(DEMO)/hamlet-model --data $(DEMO)/hamlet --backend torch
	@echo "== 7. the fused model in torch and in MLX: same logits, same greedy text"
	$(BIN)/python examples/torch_to_mlx.py $(DEMO)/hamlet-model $(DEMO)/hamlet-model-from-torch
	$(BIN)/pnlm generate $(DEMO)/hamlet-model --prompt "HAMLET" --max-tokens 40 --backend mlx
	@echo "== 8. embed the generic windows with MiniLM, k-means them into 4 clusters, see where Hamlet falls"
	$(BIN)/pnlm data cluster $(DEMO)/generic --k 4 --out $(DEMO)/clusters
	$(BIN)/pnlm data assign $(DEMO)/hamlet --clusters $(DEMO)/clusters --split train
	@echo "== demo finished: outputs in $(DEMO)/"

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	@mkdir -p .bench
	$(BIN)/python bench/train_step.py --json .bench/train_step.json
	$(BIN)/python bench/train_throughput.py --json .bench/train_throughput.json
	$(BIN)/python bench/pn_throughput.py --json .bench/pn_throughput.json
	$(BIN)/python bench/pn_throughput.py --model small --backends torch --projections 4,8,4 --soups 4,8 --json .bench/soup_throughput.json
	$(BIN)/python bench/kmeans_scale.py --json .bench/kmeans_scale.json
	PNLM_LONG=1 $(BIN)/python -m pytest -q -m long

# On a machine with an NVIDIA GPU: the CUDA check of docs/cuda.md (under 10 minutes), figures in gpu_check.json.
gpu-check: $(STAMP)
	bash bench/gpu_check.sh gpu_check.json

clean:
	rm -rf $(VENV) $(DEMO) .bench .pytest_cache
