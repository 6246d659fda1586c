# Two commands for a fresh machine: `make demo` and `make test`. Everything else is reachable
# from them; every pip call goes through constraints.txt so nothing drifts to a CUDA download.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The console scripts of pyproject.toml [project.scripts], installed by `make setup`.
BIN := $(VENV)/bin
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed
POSE_VENV := .venv-pose
POSE_STAMP := $(POSE_VENV)/.installed

# Flower's home stays inside the ignored output folder; `flwr run` must not re-install the
# app's dependencies at run time (it would fetch a CUDA torch and fails offline).
export FLWR_HOME := $(CURDIR)/outputs/flwr-home
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export PPA_WORKDIR := $(CURDIR)

.PHONY: setup demo test test-docs docker-test lint pose-setup synthetic system-deps deploy certs bench clean mutation

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# Debian packages that the integration tests run for real (Prometheus server, the Docker
# engine, docker-compose, debootstrap). Skipped when present or when apt-get is unavailable.
system-deps:
	@bash scripts/install_system_deps.sh

# Writes the synthetic set of `dataset=` (default synthetic_sysu) unless it is there:
# make synthetic ARGS=dataset=synthetic_regdb
synthetic: setup
	$(BIN)/ppa-make-synthetic $(ARGS)

# The out-of-the-box federated run (configs/experiment/demo.yaml): six camera sites of the
# synthetic SYSU-MM01 set on Flower's simulation runtime. ppa-simulate starts its own
# SuperLink (free port, Flower home under outputs/demo/flower/) and stops every process it
# started when the run ends, fails, times out or is interrupted.
demo: setup
	$(BIN)/ppa-make-synthetic dataset=synthetic_sysu
	$(BIN)/ppa-simulate --experiment demo

# The whole suite, the container tests included (PPA_CONTAINER_TESTS=1: a plain `pytest`
# leaves the multi-GB image builds out unless asked).
test: setup system-deps pose-setup
	PPA_CONTAINER_TESTS=1 $(PY) -m pytest

# Only the documented commands: every fenced command of README.md and docs/ run on tiny settings
# (tests/test_doc_commands.py, also part of `make test`).
test-docs: setup system-deps
	$(PY) -m pytest tests/test_doc_commands.py

# Only the container tests (tests/test_docker_containers.py, also part of `make test`): starts
# dockerd unless one runs (and stops it again), builds the images from Debian packages and
# this machine's wheels (docker/build_local_images.sh), runs the SYSU compose deployment for
# real and removes it.
docker-test: setup system-deps
	PPA_CONTAINER_TESTS=1 $(PY) -m pytest tests/test_docker_containers.py

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

pose-setup: $(POSE_STAMP)

$(POSE_STAMP): constraints-pose.txt scripts/install_pose_env.sh
	@test -x $(POSE_VENV)/bin/python || $(PYTHON) -m venv $(POSE_VENV)
	bash scripts/install_pose_env.sh $(POSE_VENV)
	@touch $(POSE_STAMP)

# The deployment engine on this machine: a SuperLink + one SuperNode per site on loopback.
# make deploy ARGS="--rounds 2 --tls --auth"
deploy: setup
	$(BIN)/ppa-deploy $(ARGS)

# Speed and memory ratios (docs/benchmarks.md); make bench ARGS=--quick
bench: setup
	$(BIN)/ppa-bench $(ARGS)

# Mutation testing (docs/testing.md; not part of `make test`): mutmut mutates the losses, the
# training step, the metrics and the server's aggregation rules ([tool.mutmut] in pyproject.toml
# names the judging test files) and prints the killed share per module. One worker, one thread.
MUTANTS ?= server.aggregation.* ppa.losses.* ppa.training.step.* ppa.training.objective.* \
	ppa.training.restricted_softmax.* ppa.eval.metrics.*
mutation: setup
	@mkdir -p outputs
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children 1 $(MUTANTS) \
		> outputs/mutation.log 2>&1 || (tail -n 20 outputs/mutation.log; exit 1)
	$(VENV)/bin/mutmut results --all true | awk -F'[.:]' \
		'/__mutmut_/ { split($$0, p, "__mutmut_"); mod = $$1 "." $$2; if ($$1 ~ /ppa$$/ && $$2 != "losses") mod = mod "." $$3; gsub(/^ +/, "", mod); \
		  total[mod]++; if ($$0 ~ /killed|timeout/) killed[mod]++ } \
		END { for (m in total) printf "%-22s %4d/%4d killed  %5.1f %%\n", m, killed[m], total[m], 100 * killed[m] / total[m] }' \
		| sort | tee outputs/mutation-scores.txt

certs:
	bash scripts/make_certs.sh -o outputs/certs cam1 cam2 cam3 cam4 cam5 cam6

clean:
	rm -rf outputs .pytest_cache .ruff_cache
