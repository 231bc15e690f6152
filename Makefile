# The two commands a newcomer needs: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# A second environment: a user's workstation with torchvision and timm (see constraints/torchvision.txt), where the
# tests run gap-export --preprocess and the user's own transforms, and judge this one's results against them.
TVENV  := .venv-tv
TVSTAMP := $(TVENV)/.installed
EXTRAS ?= cpu,dev

.PHONY: venv test test-fast test-gpu demo lint docs clean

venv: $(STAMP) $(TVSTAMP)

# Rebuilt only when the dependency declarations change, so a second `make venv` takes no time.
$(STAMP): pyproject.toml constraints/cpu.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints/cpu.txt -e '.[$(EXTRAS)]'
	# Signing (the [sign] extra) in a step of its own: one resolution cannot hold it beside litert-torch's converter
	# (see pyproject.toml); typing-extensions moves past xdsl's declared <4.13, and the LiteRT tests still pass.
	$(BIN)/python -m pip install --quiet -c constraints/cpu.txt 'model-signing==1.1.1' 'pyopenssl>=24'
	# The real tritonserver the Triton tests start (nvidia-pytriton bundles it, python backend only).
	# Only its binaries are used, so none of its Python dependencies (it pins numpy < 2) are installed.
	$(BIN)/python -m pip install --quiet --no-deps nvidia-pytriton==0.7.0
	# tflite-support's TFLite metadata writer (gap-pack --app for LiteRT): it declares protobuf<4, which onnx cannot
	# live with, and the writer uses none of its dependencies (see pyproject.toml's [app]).
	$(BIN)/python -m pip install --quiet --no-deps tflite-support==0.4.4
	touch $(STAMP)

$(TVSTAMP): pyproject.toml constraints/torchvision.txt Makefile
	test -x $(TVENV)/bin/python || $(PYTHON) -m venv $(TVENV)
	$(TVENV)/bin/python -m pip install --quiet --upgrade pip
	$(TVENV)/bin/python -m pip install --quiet -c constraints/torchvision.txt -e '.[cpu]' torchvision timm
	touch $(TVSTAMP)

test: venv
	$(BIN)/python -m pytest -q

# The inner loop: everything but the tests marked slow (real servers, training, every family): about 2.5 minutes.
test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

# On a machine with an NVIDIA GPU and TensorRT (see README): `make test-gpu EXTRAS=gpu-cu13,test` (or gpu-cu12,test):
# the GPU proof (fails at once without a GPU), then the marked end-to-end tests.
test-gpu: venv
	PYTHON=$(BIN)/python scripts/gpu_check.sh
	$(BIN)/python -m pytest -q -m "gpu or trt" -rs

demo: venv
	$(BIN)/python scripts/demo.py

# ruff (with its complexity rule at 15) and pyright in basic mode over the package and the scripts
# (pyproject.toml's [tool.pyright]); tests/test_lint.py runs the same two in `make test`.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/pyright

# The documentation site into site/ (open site/index.html), warnings as errors; `mkdocs serve` for a live one.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) $(TVENV) demo site *.egg-info .pytest_cache .ruff_cache
