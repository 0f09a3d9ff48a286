# paxos-service developer entry points. Every target works on a fresh clone:
# the ones that need the virtualenv build it first (cheap when up to date).
#
#   make run      a local cluster (3 acceptors, 2 proposers, 1 learner) in ./data
#   make test     the whole suite: lint, then every test, with coverage
#   make check    the fast loop before a commit: lint and the unit tests
#   make sim      the deterministic simulation over many seeds
#   make chaos    a nemesis run over network namespaces (needs root)
#   make bench    throughput and latency percentiles, optionally against etcd
#   make k8s-check  render, validate and boot the Kubernetes manifests offline

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROTO  := proto/paxos_service/v1/paxos.proto
GEN    := paxos_service/v1/paxos_pb2.py

# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k acceptor -x"`.
PYTEST_ARGS ?=
# Seeds for the simulation; `make sim SEEDS=10000` for a long run.
SEEDS ?= 2000
# Coverage of the shipped packages, measured in the test process (nodes started
# as separate processes are not counted). `make test COVERAGE=` turns it off.
COVERAGE ?= --cov=roles --cov=paxos_service --cov-report=term:skip-covered --cov-report=xml:data/coverage.xml

.PHONY: install proto run test test-fast check sim lint fmt clean

install: $(STAMP) $(GEN)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# Regenerate the wire code from proto/ (the single source of truth).
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto \
	  --python_out=. --grpc_python_out=. \
	  --plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy --mypy_out=. \
	  --plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc --mypy_grpc_out=. \
	  $(PROTO)

$(GEN): $(PROTO) $(STAMP)
	$(MAKE) proto

run: install
	$(BIN)/paxos cluster

# The whole suite: lint, unit, architecture, simulation, integration, end-to-end,
# chaos (short), k8s and bench (smoke).
test: install lint
	@mkdir -p data
	$(BIN)/python -m pytest $(COVERAGE) $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest tests/unit tests/architecture tests/simulation $(PYTEST_ARGS)

# What the pre-commit hook runs (.pre-commit-config.yaml): lint and the tests
# that need no network, process or namespace; about a minute.
check: install lint
	$(BIN)/python -m pytest -q tests/unit tests/architecture $(PYTEST_ARGS)

# The deterministic simulation of the real service code (tests/simulation/realsim)
# on every core: `make sim SEEDS=10000`; `make sim SEED=1234` replays one seed
# and prints its fault schedule. Exit 1 on any violation.
sim: install
	PYTHONHASHSEED=0 $(BIN)/python -m tests.simulation.realsim \
	  $(if $(SEED),--seed $(SEED),--seeds $(SEEDS))

# ruff (style, complexity, refactor checks), mypy --strict, the import
# contracts (roles pure, layers, no test tooling in the product), buf.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	cd proto && ../$(BIN)/buf lint

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage* paxos_service/v1/*_pb2*

# ---- Kubernetes: container image and manifests ---------------------------------
.PHONY: k8s-check image

IMAGE ?= paxos-service:dev

# Render k8s/ (base and overlays) with `kubectl kustomize`, validate it with
# `kubernetes-validate --strict`, check its structure, and boot it as real
# processes in network namespaces. Needs root, iproute2 and kubectl; no cluster.
# `make test` runs tests/k8s too.
k8s-check: install
	$(BIN)/python -m pytest tests/k8s -q $(PYTEST_ARGS)

# Needs a Docker engine (CI has none); does not need the virtualenv.
image:
	docker build -t $(IMAGE) .

# ---- Benchmark (docs/performance.md) -------------------------------------------
.PHONY: bench

# `make bench` sweeps concurrency 1,16,64,256 (puts and gets, 10 s each) on a
# local cluster. Make cannot pass `--compare etcd` itself (`make bench
# --compare etcd` is an error: make reads the flag as its own), so:
#   make bench COMPARE=etcd                       # etcd 3-member cluster, same run
#   make bench ARGS="--levels 1,64 --duration 5"  # any other flag of the benchmark
# Results go to data/bench/ (bench.json, bench.txt, bench.png with matplotlib).
COMPARE ?=
ARGS ?=

bench: install
	$(BIN)/python -m paxos_service.bench $(if $(COMPARE),--compare $(COMPARE)) $(ARGS)

# ---- Chaos: nemesis over network namespaces (docs/chaos.md) ---------------------
# Needs root (network namespaces, iptables, tmpfs); installs iptables and
# fiu-utils with apt-get if missing. `make test` runs the short run in tests/chaos.
#   make chaos DURATION=30m SEED=42
#   make chaos DURATION=60s CHAOS_ARGS="--kinds kill-leader,pause-leader --out /tmp/c1"
# The report (summary.txt/json, history.jsonl, timeline.png, logs/) goes to
# data/chaos/<time>-seed<N>/ (git-ignored) unless --out says otherwise. Exit 1 on a violation.
.PHONY: chaos
DURATION ?= 60s
SEED ?=
CHAOS_ARGS ?=

chaos: install
	$(BIN)/python -m paxos_testing.chaos --duration $(DURATION) $(if $(SEED),--seed $(SEED)) $(CHAOS_ARGS)
