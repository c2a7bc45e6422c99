# make demo: set up .venv if needed and run the end-to-end job on the sample data shipped in the package.
# make test: the test suite (CI runs this through .ci/run).
# make bench: benchmarks; results go to docs/benchmarks.md by hand, with the command, date and machine.

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

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[torch,mlx,data,test]' $(PLATFORM_DEPS)
	@touch $(STAMP)

demo: $(STAMP)
	@rm -rf $(DEMO) && mkdir -p $(DEMO)
	@echo "== 1. train a tokenizer on the sample books shipped in the package"
	$(BIN)/pnlm data tokenizer $(SAMPLES) --vocab-size 2048 --out $(DEMO)/tokenizer
	@echo "== 2. initialize a tiny model"
	$(BIN)/pnlm init --model tiny --tokenizer $(DEMO)/tokenizer --out $(DEMO)/tiny --seed 0
	$(BIN)/pnlm info $(DEMO)/tiny
	@echo "== 3. save it from torch, load it in MLX, compare logits and greedy generation"
	$(BIN)/python examples/torch_to_mlx.py $(DEMO)/tiny $(DEMO)/tiny-from-torch
	@echo "== 4. generate from the command line with each backend"
	$(BIN)/pnlm generate $(DEMO)/tiny-from-torch --prompt "It is a truth universally acknowledged" --max-tokens 24 --backend torch
	$(BIN)/pnlm generate $(DEMO)/tiny-from-torch --prompt "It is a truth universally acknowledged" --max-tokens 24 --backend mlx
	@echo "== 5. token stores: Austen and Bierce as the generic set, Hamlet as the domain (context 256)"
	$(BIN)/pnlm data prepare $(GENERIC_SAMPLES) --tokenizer $(DEMO)/tokenizer --context 256 --out $(DEMO)/generic
	$(BIN)/pnlm data prepare $(DOMAIN_SAMPLE) --tokenizer $(DEMO)/tokenizer --context 256 --out $(DEMO)/hamlet
	@echo "== 6. embed the generic windows with MiniLM, k-means them into 4 clusters, see where Hamlet falls"
	$(BIN)/pnlm data cluster $(DEMO)/generic --tokenizer $(DEMO)/tokenizer --k 4 --out $(DEMO)/clusters
	$(BIN)/pnlm data assign $(DEMO)/hamlet --clusters $(DEMO)/clusters --split train
	@echo "== demo finished: outputs in $(DEMO)/"

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	@mkdir -p .bench
	$(BIN)/python bench/train_step.py --json .bench/train_step.json

clean:
	rm -rf $(VENV) $(DEMO) .bench .pytest_cache
