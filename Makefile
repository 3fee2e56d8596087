# Everything a fresh machine needs: `make run` (the main job) and `make test` (the test suite).
# Both create .venv with Python 3.11+ and install the package with all extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU-only torch wheel; an unpinned torch would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: run test test-fast test-flower simulate bench typecheck clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q -e ".[all]" "$(TORCH_PIN)"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/fedlm run --out runs/latest --report runs/latest/report.json

simulate: $(STAMP)
	$(BIN)/secagg simulate --protocol secagg+ --clients 50 --dim 100000 --dropout 0.2 --json

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q tests

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q tests -m "not flower"

test-flower: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -s tests/adapters -m flower

bench: $(STAMP)
	mkdir -p benchmarks/results
	$(BIN)/python -m benchmarks.masking --plot benchmarks/results/masking.png
	$(BIN)/python -m benchmarks.ckks_vs_nvflare
	$(BIN)/python -m benchmarks.packing

typecheck: $(STAMP)
	$(BIN)/python -m mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .hypothesis
