# The two entry points of the README: `make run` (the main job) and `make test` (the suite).
# Both create .venv on first use. torch/torchvision are pinned and installed first so that pip
# takes the local wheels instead of resolving a different build through another package.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

# The released mn04_as weights, where this checkout has them beside it (../shared/models);
# elsewhere they are looked up in the user cache or downloaded (see README).
ifneq ($(wildcard ../shared/models/mn04_as_mAP_432.pt),)
export HYBRID_RETRIEVAL_WEIGHTS_DIR ?= $(abspath ../shared/models)
endif

.PHONY: run test venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q --no-deps "tinysoundfont>=0.3.6,<0.4"
	$(PIP) install -q -e ".[dev]"
	touch $@

run: venv
	$(PY) scripts/main_job.py

# Tests never reach a hub: everything they need is on disk.
test: export HF_HUB_OFFLINE = 1
test: export HF_DATASETS_OFFLINE = 1
test: export TRANSFORMERS_OFFLINE = 1
test: venv
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs results .cache .pytest_cache
