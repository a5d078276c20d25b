# qgan-bench entry points.  `make report` and `make test` set everything up first.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= $(shell command -v python3.11 || command -v python3)
STAMP := $(VENV)/.installed
CORES ?= all
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export MPLBACKEND := Agg

.PHONY: setup setup-slurm report test dry-run-paper lint clean mlflow-server adopt

setup: $(STAMP)

# Rebuilt only when requirements.txt changes: a second `make setup` is a no-op.
$(STAMP): requirements.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade-strategy only-if-needed -r requirements.txt
	$(VENV)/bin/python -c "import torch, torchvision, snakemake, pytorch_fid, dvc, mlflow, onnxruntime, torchao; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	@touch $(STAMP)

# The SLURM executor plugins (requirements-slurm.txt).  setup-slurm: into .venv, for a cluster's login
# node (README "Running on a SLURM cluster").  The test suite's copy goes to its own folder instead, which
# tests/slurm_plugins.py puts on the PYTHONPATH of the SLURM runs only: with the plugin in .venv, every
# `snakemake` start imports pandas with it (0.3 s of a 1.5 s dry run).
SLURM_PLUGINS := $(VENV)/slurm-plugins
setup-slurm: setup
	$(VENV)/bin/python -m pip install -r requirements-slurm.txt

$(SLURM_PLUGINS)/.installed: requirements-slurm.txt $(STAMP)
	rm -rf $(SLURM_PLUGINS)
	$(VENV)/bin/python -m pip install --quiet --no-deps --target $(SLURM_PLUGINS) -r requirements-slurm.txt
	@touch $@

report: setup
	bash scripts/run-workflow.sh --cores $(CORES) report
	@echo "Report: $(CURDIR)/reports/index.html (table: reports/results.csv, reports/table4.md)"

test: setup $(SLURM_PLUGINS)/.installed
	python -m pytest -q --durations=25 tests

# The MLflow tracking server for cluster runs (README "Tracking with MLflow"): the workflow's own store
# (MLFLOW_DIR/mlflow.db, artifacts in MLFLOW_DIR/mlruns) served over HTTP, so that jobs on compute nodes
# log through one process instead of writing sqlite on a shared file system.  On the login node:
#   make mlflow-server MLFLOW_HOST=0.0.0.0   and   export MLFLOW_TRACKING_URI=http://<login node>:5000
MLFLOW_DIR ?= $(CURDIR)
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
mlflow-server: setup
	exec mlflow server --backend-store-uri "sqlite:///$(abspath $(MLFLOW_DIR))/mlflow.db" \
		--serve-artifacts --artifacts-destination "$(abspath $(MLFLOW_DIR))/mlruns" \
		--host $(MLFLOW_HOST) --port $(MLFLOW_PORT) --workers 1

# Hand a built tree from one tool to the other (README "Snakemake and DVC on one tree"): the outputs stay
# as they are; DVC records every output in dvc.lock and its cache (which rewrites the files, so their times
# no longer follow the DAG), then Snakemake marks each output of the report's DAG up to date.  A tree DVC
# built has no benchmark files, which Snakemake counts as outputs: the report alone is rerun to write its
# own (any other job missing fails here), and DVC records its new outputs.  Both end by saying that
# nothing is left to run.  For a tree built with params.yaml alone (what dvc.yaml describes).
SNAKEMAKE_ARGS ?=
adopt: setup
	dvc commit --force --quiet
	snakemake report --cores 1 --touch $(SNAKEMAKE_ARGS) --quiet rules
	snakemake report --cores 1 --allowed-rules report $(SNAKEMAKE_ARGS) --quiet rules
	dvc commit --force --quiet report
	dvc status
	@snakemake --dry-run report $(SNAKEMAKE_ARGS) 2>&1 | grep -q "^Nothing to be done" \
		&& echo "Snakemake: nothing to be done." \
		|| { echo "Snakemake would still run:"; snakemake --dry-run --quiet rules report $(SNAKEMAKE_ARGS); exit 1; }

dry-run-paper: setup
	snakemake -n report --configfile configs/paper.yaml

lint: setup
	snakemake --lint

# Everything the workflow wrote in this directory: its outputs, logs, Snakemake's and its own state, the
# MLflow store (mlflow.db, mlruns/).  The environment (.venv) and DVC's cache stay.
clean:
	rm -rf .qgan .snakemake data downloads resources stats models distill eval metrics samples sweeps sensitivity reports logs exports \
		mlruns mlflow.db mlflow.db.lock
