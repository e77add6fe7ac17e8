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

.PHONY: install test test-fast demo demo-train photos pretrained student pretrained-synthetic pretrained-paper \
	distill-rounds device-check clean

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
PRETRAINED ?= pretrained/demo
TEST_DATA ?= data/synthetic_photo_test
TEST_TFDS ?= data/tfds_photo_test

# The shipped model (pretrained/demo, no training): synthetic test data -> TFDS ->
# evaluation at 192 px (paper-style tables, sample grid) -> diffraw on a DNG.
demo: install
	test -d $(TEST_DATA)/test || $(BIN)/python -m diffraw_jax.data.synthetic_zrr --out $(TEST_DATA) \
		--num_train 16 --num_test 16 --size 448 --seed 0
	$(BIN)/python -m tfds_zrr.build --manual_dir $(TEST_DATA) --data_dir $(TEST_TFDS) --config calibrated
	$(BIN)/python main.py --config=configs/pretrained.py --workdir=$(DEMO_WORK)/demo --mode=eval \
		--config.data.data_dir=$(TEST_TFDS) --config.eval.model=$(PRETRAINED) --config.eval.num_images=8
	$(BIN)/python -m diffraw_jax.data.dng_writer --out $(DEMO_WORK)/demo/raw --num 1 --height 256 --width 384
	$(BIN)/diffraw --checkpoint $(PRETRAINED) --input $(DEMO_WORK)/demo/raw --output $(DEMO_WORK)/demo/diffraw \
		--method dtdm_ddim --steps 10 --overwrite
	@echo "demo results: $(DEMO_WORK)/demo/eval/test/summary.md and samples.png; $(DEMO_WORK)/demo/diffraw/"

# Training from scratch at demo size (~15 min on 2 cores): G, DiffRAW, evaluation.
# Every stage is idempotent: a rerun reuses the data and resumes or skips training.
demo-train: install
	test -d $(DEMO_DATA)/train || $(BIN)/python -m diffraw_jax.data.synthetic_zrr --out $(DEMO_DATA) \
		--num_train 256 --num_test 16 --size 448 --seed 0
	$(BIN)/python -m tfds_zrr.build --manual_dir $(DEMO_DATA) --data_dir $(DEMO_TFDS)
	$(BIN)/python main.py --config=configs/isp.py --workdir=$(DEMO_WORK)/demo_isp \
		--config.data.data_dir=$(DEMO_TFDS)
	$(BIN)/python main.py --config=configs/synthetic.py --workdir=$(DEMO_WORK)/demo_train \
		--config.data.data_dir=$(DEMO_TFDS) --config.color_net.workdir=$(DEMO_WORK)/demo_isp
	$(BIN)/python main.py --config=configs/synthetic.py --workdir=$(DEMO_WORK)/demo_train --mode=eval \
		--config.data.data_dir=$(DEMO_TFDS) --config.color_net.workdir=$(DEMO_WORK)/demo_isp
	@echo "results: $(DEMO_WORK)/demo_train/eval/test/summary.md and samples.png"

# The shipped teacher (pretrained/demo) into pretrained/demo-new: the data command (23 real
# photographs from Debian's wallpaper packages and textured dead leaves, unprocessed into RAW pairs
# with their calibration, 40% at base-ISO noise, optics blur 0-0.3 px; apt-get download, nothing
# installed), its TFDS build, pretrained/synthetic fine-tuned on it (configs/pretrained.py),
# export-weights. About 30 minutes on 2 CPU cores; see pretrained/demo/TRAINING.md and docs/real-detail.md.
PHOTOS ?= data/photos
PHOTOS_TFDS ?= data/tfds_photos
photos: install
	test -f $(PHOTOS)/photos.json || $(BIN)/python -m diffraw_jax.data.photos --out $(PHOTOS) \
		--num_train 1024 --num_test 32 --workers 2 --blur 0,0.3
	$(BIN)/python -m tfds_zrr.build --manual_dir $(PHOTOS) --data_dir $(PHOTOS_TFDS) --config calibrated

pretrained: photos
	$(BIN)/python main.py --config=configs/pretrained.py --workdir=$(DEMO_WORK)/pretrained
	$(BIN)/diffraw export-weights --checkpoint $(DEMO_WORK)/pretrained --out pretrained/demo-new

# The shipped one-step model (pretrained/distill-1) into pretrained/distill-1-new: the teacher
# specialised to its one-step sampler from the file's noise-matched start (configs/student.py;
# TEACHER=pretrained/demo-new after `make pretrained` for the whole chain). About 10 minutes.
TEACHER ?= pretrained/demo
student: photos
	$(BIN)/python main.py --config=configs/student.py --workdir=$(DEMO_WORK)/student \
		--config.train.init_from=$(TEACHER)
	$(BIN)/diffraw export-weights --checkpoint $(DEMO_WORK)/student --out pretrained/distill-1-new

# The synthetic-data base (pretrained/synthetic, calibrated colour, that pretrained/demo is
# fine-tuned from) into pretrained/synthetic-new: 1,024 photographic synthetic pairs with their
# calibration (zrr/calibrated), then DiffRAW (configs/pretrained_synthetic.py, fine-tuned from
# pretrained/paper-demo) and export-weights. About 45 minutes on 2 CPU cores; see
# pretrained/synthetic/TRAINING.md.
PHOTO_DATA ?= data/synthetic_photo
PHOTO_TFDS ?= data/tfds_photo
pretrained-synthetic: install
	test -d $(PHOTO_DATA)/train || $(BIN)/python -m diffraw_jax.data.synthetic_zrr --out $(PHOTO_DATA) --aligned \
		--num_train 1024 --num_test 16 --size 448 --seed 0
	$(BIN)/python -m tfds_zrr.build --manual_dir $(PHOTO_DATA) --data_dir $(PHOTO_TFDS) --config calibrated
	$(BIN)/python main.py --config=configs/pretrained_synthetic.py --workdir=$(DEMO_WORK)/pretrained_synthetic
	$(BIN)/diffraw export-weights --checkpoint $(DEMO_WORK)/pretrained_synthetic --out pretrained/synthetic-new

# The paper-condition model (pretrained/paper-demo: G, then DiffRAW trained on x = c = D2(y)) into
# pretrained/paper-demo-new. It was made with the generator of commit 2472a45 (dead leaves without
# the photographic textures), so today's data gives a similar, not the identical, model. ~2 hours.
pretrained-paper: install
	test -d data/synthetic_zrr_pretrain/train || $(BIN)/python -m diffraw_jax.data.synthetic_zrr \
		--out data/synthetic_zrr_pretrain --num_train 1024 --num_test 16 --size 448 --seed 0
	$(BIN)/python -m tfds_zrr.build --manual_dir data/synthetic_zrr_pretrain --data_dir data/tfds_pretrain
	$(BIN)/python main.py --config=configs/pretrained_isp.py --workdir=$(DEMO_WORK)/pretrained_isp
	$(BIN)/python main.py --config=configs/pretrained_paper.py --workdir=$(DEMO_WORK)/pretrained_paper
	$(BIN)/diffraw export-weights --checkpoint $(DEMO_WORK)/pretrained_paper --out pretrained/paper-demo-new

# Few-step DiffRAW from s (docs/evaluation.md "Few-step DiffRAW"): four rounds of progressive
# distillation of pretrained/demo (DTDM-DDIM 16 -> 8 -> 4 -> 2 -> 1 steps from s; each round resumes
# if stopped), the measurements in results/distill, and the 1-step student's weights folder.
distill-rounds: photos
	for n in 8 4 2 1; do \
		$(BIN)/python main.py --config=configs/distill.py:$$n --workdir=workdir/distill/student-$$n || exit 1; \
	done
	$(BIN)/python scripts/distill_report.py --out results/distill
	$(BIN)/diffraw export-weights --checkpoint workdir/distill/student-1 --out pretrained/distill-rounds-1

# One short check on a GPU/TPU (at most 8 minutes, benchmarks/device_check.py): train step and
# forward in bfloat16 with MFU (against PyTorch where torch is installed), the memory plan's goal
# rows compiled on the device, sampling throughput (1-step student, DTDM-100), a 200-step run of
# configs/zrr.py. Writes results/benchmarks/<device>.md and .json; commit them with
#   git add results/benchmarks/<device>.* && git commit -m "device check on <device>"
# (a rerun that would replace a committed result needs DEVICE_CHECK_ARGS=--overwrite).
# SMOKE=1: the same stages on the CPU at a tiny size -> results/benchmarks/cpu-smoke.md.
SMOKE ?=
DEVICE_CHECK_ARGS ?=
device-check: install
	$(BIN)/python -m benchmarks.device_check $(if $(SMOKE),--smoke) $(DEVICE_CHECK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
