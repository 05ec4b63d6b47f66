# Two commands: `make train` and `make test`. Each creates .venv and installs the project first.
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
TORCH := torch==2.14.1 torchvision==0.29.1
# CPU=1: PyTorch's CPU-only wheels (no CUDA libraries) for machines without a GPU.
CPU_INDEX := https://download.pytorch.org/whl/cpu

.PHONY: install train test test-slow test-slurm lint format clean bench time-to-quality

$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --upgrade pip
	$(if $(CPU),$(PYTHON) -m pip install $(TORCH) --index-url $(CPU_INDEX))
	$(PYTHON) -m pip install $(TORCH) -e ".[dev,sweeps,slurm]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PYTHON) -m ddpm_lightning.train $(ARGS)

# pytest exits 5 when no test is collected (e.g. ARGS="-k nothing"): not a failure.
test: $(STAMP)
	$(PYTHON) -m pytest $(ARGS) || [ $$? -eq 5 ]

test-slow: $(STAMP)
	$(PYTHON) -m pytest -m slow $(ARGS) || [ $$? -eq 5 ]

# The slow tests on a one-node Slurm cluster that they start with scripts/local_slurm.sh (as
# root, after `apt-get install -y slurm-wlm munge`; skipped without them).
test-slurm: $(STAMP)
	$(PYTHON) -m pytest -m slow tests/test_slurm.py $(ARGS)

lint: $(STAMP)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy ddpm_lightning

format: $(STAMP)
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

clean:
	rm -rf $(VENV) dist build .ruff_cache .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

bench: $(STAMP)
	$(PYTHON) -m ddpm_lightning.tools.bench $(ARGS)

# The 30-minute MNIST figure end to end: the default recipe stopped at 8,400 steps of batch 64
# (30 min of training on an idle 2-core CPU, its cosine decay planned over them), then FLD of
# 10,000 samples with the default sampler.
time-to-quality: $(STAMP)
	$(PYTHON) -m ddpm_lightning.train task_name=time_to_quality +trainer.max_time=00:00:30:00 $(ARGS)
	$(PYTHON) -m ddpm_lightning.evaluate ckpt_path=last train_task_name=time_to_quality \
		num_samples=10000
