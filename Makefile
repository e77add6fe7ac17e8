# diffraw-jax: `make install`, `make test`, `make demo`.
# Everything installs into .venv from this repository's setup.py.
# EXTRAS=all is core + train + test, without torch (the `bench` extra, ~5 GB with
# CUDA): the PyTorch reference's tests skip without it. For them, after
# `make install`: .venv/bin/python -m pip install torch==2.13.0   (as .ci/run does)
PYTHON ?= python3
VENV   ?= .venv
EXTRAS ?= all
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?= -n 2

.PHONY: install test test-fast demo clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

DEMO_DATA ?= data/synthetic_zrr
DEMO_TFDS ?= data/tfds
DEMO_WORK ?= workdir

# Synthetic ZRR-format data -> TFDS -> train G -> train DiffRAW -> sample + evaluate.
# Every stage is idempotent: a rerun reuses the data and resumes or skips training.
demo: install
	test -d $(DEMO_DATA)/train || $(BIN)/python -m tfds_zrr.synthetic --out $(DEMO_DATA) \
		--num_train 256 --num_test 16 --size 448 --seed 0
	$(BIN)/python -m tfds_zrr.build --manual_dir $(DEMO_DATA) --data_dir $(DEMO_TFDS)
	$(BIN)/python main.py --config=configs/isp.py --workdir=$(DEMO_WORK)/demo_isp \
		--config.data.data_dir=$(DEMO_TFDS)
	$(BIN)/python main.py --config=configs/synthetic.py --workdir=$(DEMO_WORK)/demo \
		--config.data.data_dir=$(DEMO_TFDS) --config.color_net.workdir=$(DEMO_WORK)/demo_isp
	$(BIN)/python main.py --config=configs/synthetic.py --workdir=$(DEMO_WORK)/demo --mode=eval \
		--config.data.data_dir=$(DEMO_TFDS) --config.color_net.workdir=$(DEMO_WORK)/demo_isp
	@echo "demo results: $(DEMO_WORK)/demo/eval/test/summary.md and samples.png"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
