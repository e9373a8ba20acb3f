# The README's two commands: `make demo` (set up + run the PPMA recipe on demo data), `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first: this machine serves a CUDA build of 2.14.1 from disk; on a cluster pick the build
# that matches its CUDA (e.g. TORCH_SPEC="torch==2.14.1 --index-url https://download.pytorch.org/whl/cu130").
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO_DIR ?= demo_data
DEMO_RUNS ?= runs/demo

.PHONY: install demo test bench clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q $(TORCH_SPEC)
	# DeepSpeed ships only an sdist: build it against the torch above, not a fresh one.
	$(BIN)/pip install -q --no-build-isolation deepspeed
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

test: install
	$(BIN)/python -m pytest -q tests

demo: install
	$(BIN)/python launch/demo.py --data $(DEMO_DIR) --runs $(DEMO_RUNS)

bench: install
	$(BIN)/python bench/run_all.py

clean-demo:
	rm -rf $(DEMO_DIR) $(DEMO_RUNS)
