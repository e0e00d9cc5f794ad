# adv_layer: the README's commands end here.
#   make demo    smoke demo: pretrain f_b, train the defended model, attack it;
#                then a short attack on the published strong_cpu defended model
#   make test    the fast Bazel targets (//:ci), then pytest over tests/, then
#                the golden and zoo-card tests again with oneDNN off
#   make bench   the transform / training benchmark (examples/benchmark.py)
#   make bazel   build every Bazel target offline
#   make gpu-check  on an NVIDIA GPU machine: installs the [and-cuda] extra,
#                then contract tests on the GPU, the transform's speed and
#                AutoAttack's rand version on the published model (docs/GPU.md)
# PYTHON defaults to the README's .venv when it exists.

PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
# Bazel's autodetecting Python toolchain runs the python3 on PATH: the venv's.
VENV_BIN := $(abspath $(dir $(shell command -v $(PYTHON))))
BAZEL := PATH="$(VENV_BIN):$$PATH" bazel
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
DEMO_DIR ?= runs/demo
# A smoke-sized attack budget: six of the `adaptive` preset's 21 attacks,
# briefly.
SMOKE_ATTACK_FLAGS ?= --budget=smoke --attacks=pgd_restarts_bpda_identity,apgd_ce_bpda_identity,apgd_ce_bpda,cheaper_transfer_k1,whitebox_transfer,square \
    --num_examples=20 --steps=5 --eot_samples=2 --queries=100 --draws=2 \
    --eot_curve=1,2 --noconvergence
# The published defended model (adv_layer.zoo, strong_cpu preset) under a short
# attack: a real model's verdict in a minute or two, far below the reference.
PUBLISHED_MODEL ?= cifar10/defended_resnet18
PUBLISHED_ATTACK_FLAGS ?= --budget=smoke --attacks=apgd_ce_bpda_identity \
    --num_examples=50 --steps=5 --eot_samples=2 --draws=4 --eot_curve= \
    --noconvergence

# attack_eval.py exits 2 for a SUSPECT verdict (a sign of gradient masking)
# and 4 for an UPPER BOUND (below the reference budget, as every smoke run
# is): its report is written and printed, so the demo goes on.
REPORTED := || [ $$? -eq 2 -o $$? -eq 4 ]

# The offline CIFAR-10 copy beside the repository (README, "Data"), unless
# TFDS_DATA_DIR is already set; elsewhere tfds downloads as usual.
SHARED_TFDS := $(abspath ../shared/tensorflow_datasets)
ifeq ($(origin TFDS_DATA_DIR),undefined)
ifneq ($(wildcard $(SHARED_TFDS)),)
export TFDS_DATA_DIR := $(SHARED_TFDS)
endif
endif

.PHONY: demo test pytest pytest-portable bazel-test bazel bazel-deps bench

demo:
	$(PYTHON) examples/pretrain_fb.py --preset=smoke --output=$(DEMO_DIR)/f_b.keras
	$(PYTHON) examples/train_cifar10.py --preset=smoke --fb=$(DEMO_DIR)/f_b.keras \
	    --output=$(DEMO_DIR)/defended.keras
	$(PYTHON) examples/attack_eval.py --model=$(DEMO_DIR)/defended.keras \
	    --report_dir=$(DEMO_DIR)/report $(SMOKE_ATTACK_FLAGS) $(REPORTED)
	$(PYTHON) examples/attack_eval.py --model=zoo:$(PUBLISHED_MODEL) \
	    --report_dir=$(DEMO_DIR)/published_report $(PUBLISHED_ATTACK_FLAGS) \
	    $(REPORTED)

# Bazel first, so that a pytest summary is the last line.
test: bazel-test pytest pytest-portable

pytest:
	$(PYTHON) -m pytest tests -q

# The tests that compare computed figures with kept ones (the golden
# evaluation, the zoo's model cards) once more on TensorFlow's own CPU
# kernels: TF_ENABLE_ONEDNN_OPTS=0 changes the kernels (and the order of
# their sums) as a CPU without AVX-512 does, so a float compared more tightly
# than other machines reproduce it fails here, not on a user's machine.
PORTABLE_TESTS ?= tests/golden_test.py \
    tests/zoo_test.py::ZooTest::test_every_model_reproduces_its_card
pytest-portable:
	TF_ENABLE_ONEDNN_OPTS=0 $(PYTHON) -m pytest $(PORTABLE_TESTS) -q

# The Bazel server is shut down afterwards (also on failure) so that nothing
# outlives the run.
bazel-test: bazel-deps
	$(BAZEL) test //:ci; status=$$?; bazel shutdown; exit $$status

bazel: bazel-deps
	$(BAZEL) build //...

# Debian's bazel-bootstrap (4.2.3) and the rules_java it needs offline.
bazel-deps:
	@if ! command -v bazel >/dev/null || [ ! -d /usr/share/bazel/rules/java ]; then \
	  $(SUDO) apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends \
	      bazel-bootstrap bazel-rules-java; \
	fi

bench:
	$(PYTHON) examples/benchmark.py

# The GPU check (examples/gpu_check.py, docs/GPU.md): refused without an
# NVIDIA driver; swaps a tensorflow-cpu install for the [and-cuda] extra in the
# README's .venv (the two write the same package), then runs the check into
# GPU_CHECK_DIR. On a CPU: .venv/bin/python examples/gpu_check.py --reduced
GPU_CHECK_DIR ?= runs/gpu_check
.PHONY: gpu-check
gpu-check:
	@{ command -v nvidia-smi || test -e /proc/driver/nvidia/version; } \
	    >/dev/null || { echo "gpu-check: no NVIDIA GPU (no nvidia-smi, no" \
	    "/proc/driver/nvidia). On a CPU run the reduced check:" \
	    ".venv/bin/python examples/gpu_check.py --reduced"; exit 2; }
	test -x .venv/bin/python || python3 -m venv .venv
	if .venv/bin/python -m pip show -q tensorflow-cpu 2>/dev/null; then \
	  .venv/bin/python -m pip uninstall -y tensorflow-cpu tensorflow; fi
	.venv/bin/python -m pip install -e '.[and-cuda]' pytest
	.venv/bin/python examples/gpu_check.py --out=$(GPU_CHECK_DIR)
