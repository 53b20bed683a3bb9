# One-command setup, training and tests from a fresh clone (needs only Python >= 3.10).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The CPU build of PyTorch is pinned for the setup step only; the package itself asks for torch>=2.3.
TORCH_SPEC ?= torch==2.13.0
# Optional: a wheel index for torch, e.g. https://download.pytorch.org/whl/cpu for the CPU build.
TORCH_INDEX ?=
EXTRAS ?= dev,all
ARGS ?=

.PHONY: install train test bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(VENV)/bin/qmix train $(ARGS)

test: $(STAMP)
	$(PY) -m pytest tests $(ARGS)

bench: $(STAMP)
	$(VENV)/bin/qmix bench $(ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
