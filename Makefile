# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv benchmark clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/train.py --config configs/tgn.yml --data uci --epochs 3 --out runs/demo --overwrite

test: $(STAMP)
	$(PY) -m pytest -q

benchmark: $(STAMP)
	$(PY) scripts/benchmark.py sampler --data wikipedia --out runs/bench_sampler.json

clean:
	rm -rf runs .pytest_cache
