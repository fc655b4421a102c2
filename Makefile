# trustd developer entry points. `make run` starts a working server; `make test` runs
# every check CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q --disable-pip-version-check -c deploy/constraints.txt
# Debian packages the tests drive (openssl verify; PostgreSQL and Redis servers; the ACME
# clients certbot and lego, and pebble as the ACME benchmark baseline; chromium for the
# admin UI's Playwright tests; graphviz's dot lays out the admin UI's graph).
DEB_PACKAGES := openssl postgresql redis-server certbot lego pebble chromium graphviz
# eBPF enforcement: clang compiles the tc program, libbpf loads it, bpftool reads its maps,
# iproute2 makes the test namespaces; nginx is the auth_request enforcement point.
DEB_PACKAGES += clang llvm libbpf-dev bpftool iproute2 nginx
# Shell completion is tested in a real zsh (bash is there already).
DEB_PACKAGES += zsh
# CA keys in a PKCS#11 token: SoftHSM2 is the token, opensc's pkcs11-tool reads it.
DEB_PACKAGES += softhsm2 opensc
# promtool checks /metrics, the alerting rules and their unit tests (deploy/prometheus).
DEB_PACKAGES += prometheus
# The deployment artifacts' checks (tests/integration/test_deploy_artifacts.py):
# systemd-analyze verifies the units and scores their exposure, setpriv and nsenter run
# the agent under the unit's capability set; haproxy -c and patroni --validate-config
# check the HA examples (deploy/ha) that `make ha` runs. kubectl (kustomize) and Node.js
# with npm (the CRD schemas' validator) come with the machine image.
DEB_PACKAGES += systemd util-linux haproxy patroni
# TPM node attestation: swtpm (with swtpm_setup and its local CA) is the TPM, tpm2-tools an
# independent client; tpm2-pytss (the `tpm` extra) builds against libtss2-dev via pkg-config.
DEB_PACKAGES += swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config
# The high-availability topology (`make ha`, `make ha-test`) only: etcd for Patroni's
# PostgreSQL failover, Redis Sentinel, and faketime (libfaketime: `make ha-test` steps one
# replica's wall clock). Not installed by `make test`.
HA_DEB_PACKAGES := etcd-server etcd-client redis-sentinel faketime
PG_ADMIN_URL ?= postgresql://postgres@127.0.0.1:5432/postgres
CHECK_DB := trustd_alembic_check_$(shell echo $$$$)

.PHONY: run test test-faults install install-dev system-deps services lint typecheck migrations-check pytest \
	opa-compliance fuzz \
	ha ha-deps ha-test bench bench-deps bench-acme bench-workload bench-ui bench-enforcement clean distclean proto bpf

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "trustd needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml deploy/constraints.txt deploy/regorus.txt
	@echo "installing trustd into $(VENV)"
	$(BIN)/pip install -q --disable-pip-version-check --require-hashes --no-deps -r deploy/regorus.txt
	$(PIP) -e .
	@# xds-protos (Envoy's ext_authz API) carries an old copy of opentelemetry/proto/, which
	@# the OTLP exporter cannot import; opentelemetry-proto's own files must win, whatever
	@# order pip unpacked the two in.
	$(PIP) --force-reinstall --no-deps opentelemetry-proto
	@touch $@

# After system-deps: the `tpm` extra in `.[dev]` builds tpm2-pytss against libtss2-dev.
$(VENV)/.installed-dev: $(VENV)/.installed | system-deps
	@echo "installing development tools into $(VENV)"
	$(PIP) -e '.[dev]'
	@touch $@

# The prometheus-operator CRD schemas the Kubernetes manifests are validated against,
# pinned by the lock file (deploy/kubernetes/validate).
K8S_VALIDATOR := deploy/kubernetes/validate
$(K8S_VALIDATOR)/node_modules/.package-lock.json: $(K8S_VALIDATOR)/package.json $(K8S_VALIDATOR)/package-lock.json
	@echo "installing the Kubernetes CRD schemas into $(K8S_VALIDATOR)"
	npm ci --prefix $(K8S_VALIDATOR) --no-audit --no-fund --loglevel=error
	@touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev $(K8S_VALIDATOR)/node_modules/.package-lock.json

run: install
	$(BIN)/trustd serve

system-deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

services: system-deps
	@pg_isready -q -h 127.0.0.1 -p 5432 || { \
		echo "starting PostgreSQL"; \
		pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | tail -1) main start; \
		for i in $$(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done; }
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || { \
		echo "starting Redis"; mkdir -p /var/lib/redis /var/log/redis; \
		redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
			--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log; \
		for i in $$(seq 30); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.2; done; }

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install-dev
	$(BIN)/mypy trustd pki policy

# Models and migrations must not drift: migrate a scratch PostgreSQL database to head,
# then `alembic check` fails if autogenerate would still find differences.
migrations-check: install-dev services
	@psql -q "$(PG_ADMIN_URL)" -c 'CREATE DATABASE $(CHECK_DB)'
	@trap 'psql -q "$(PG_ADMIN_URL)" -c "DROP DATABASE IF EXISTS $(CHECK_DB)"' EXIT; \
	$(BIN)/alembic -x url=postgresql+psycopg://postgres@127.0.0.1:5432/$(CHECK_DB) upgrade head && \
	$(BIN)/alembic -x url=postgresql+psycopg://postgres@127.0.0.1:5432/$(CHECK_DB) check

# The slowest tests are listed at the end, to keep an eye on the 20-minute budget. The long
# fault-injection runs (marker `fault`) have their own target; CI runs both. Tests run on two
# workers (pytest-xdist, one file per worker at a time: every test has its own databases,
# ports and namespaces, and Redis keys and channels are scoped per deployment), except those
# that time real agents, packets and propagation (marker `timed`), which run alone after
# the others, where a second worker's load cannot eat into their budgets.
PYTEST_WORKERS ?= 2

pytest: install-dev services
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=20 -m "not fault and not timed"
	$(BIN)/pytest --durations=10 -m "timed and not fault"

test-faults: install-dev services
	$(BIN)/pytest --durations=10 -m fault

# OPA's own compliance cases through a real `trustd serve` (bench/opa_compliance.py), when
# they are at OPA_CASES: fails if fewer than OPA_COMPLIANCE_FLOOR pass (last measured 1,859
# of 2,067 with the Data API's writes and the graphql builtins; raise the floor as fidelity
# improves, never lower it to pass).
OPA_CASES ?= ../shared/opa-compliance/v1
OPA_COMPLIANCE_FLOOR ?= 1849

opa-compliance: install-dev
	@if [ -d "$(OPA_CASES)" ]; then \
		$(BIN)/python bench/opa_compliance.py --cases $(OPA_CASES) --floor $(OPA_COMPLIANCE_FLOOR); \
	else echo "OPA compliance cases not found at $(OPA_CASES): not run"; fi

# The whole API fuzzed from its OpenAPI document against a scratch `trustd serve`
# (bench/fuzz.py): no 5xx and no response outside its declared schema. FUZZ_SEED fixes the
# cases; FUZZ_BUDGET bounds the time. `make test` runs a short slice of it
# (tests/integration/test_fuzz.py).
FUZZ_SEED ?= 1
FUZZ_BUDGET ?= 300
FUZZ_EXAMPLES ?= 60

fuzz: install-dev
	$(BIN)/python bench/fuzz.py --seed $(FUZZ_SEED) --budget $(FUZZ_BUDGET) --examples $(FUZZ_EXAMPLES)

test: install-dev services lint typecheck migrations-check pytest opa-compliance

# wrk drives the HTTP benches (issuance, decisions, ext_authz).
bench-deps: install-dev services
	@dpkg -s wrk >/dev/null 2>&1 || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq wrk >/dev/null; }

bench: bench-deps
	$(BIN)/python bench/issuance.py
	$(BIN)/python bench/decisions.py
	$(BIN)/python bench/revocation.py
	$(BIN)/python bench/agent.py
	$(BIN)/python bench/flows.py

# The SPIFFE Workload API stubs, generated from the spec's proto (kept unchanged, plus the
# experimental WIT-SVID profile's messages and methods from spiffe/spiffe's
# workloadapiwitsvid.proto) and committed; run after updating trustd/agent/proto/workload.proto.
proto: install-dev
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m grpc_tools.protoc -I . --python_out=. \
		--grpc_python_out=. --mypy_out=. --mypy_grpc_out=. trustd/agent/proto/workload.proto

bench-workload: install-dev
	$(BIN)/python bench/workload_api.py

# The agent compiles it on start when missing; this checks the C source alone.
bpf:
	clang -O2 -g -target bpf -I/usr/include/$$(uname -m)-linux-gnu \
		-c trustd/agent/bpf/enforce.c -o trustd/agent/bpf/enforce.o

# ext_authz (HTTP and gRPC) against a trivial endpoint on the same core; the eBPF program's
# cost on connect rate and throughput between namespaces (root), attached vs detached; a
# policy change propagated to 100 agents (PostgreSQL and Redis, one server and two replicas).
bench-enforcement: bench-deps
	$(BIN)/python bench/extauthz.py
	$(BIN)/python bench/enforcement.py
	$(BIN)/python bench/propagation.py

bench-acme: install-dev services
	$(BIN)/python bench/acme.py

# A federated bundle change until 100 agents of the other domain hold it; bundle endpoint req/s.
bench-federation: install-dev services
	$(BIN)/python bench/federation.py

# Admin UI page times with 10k entries, 100k certificates, 1M decision-log rows.
bench-ui: install-dev services
	$(BIN)/python bench/ui.py

ha-deps: install
	@$(MAKE) --no-print-directory system-deps DEB_PACKAGES="$(DEB_PACKAGES) $(HA_DEB_PACKAGES)"

# etcd, two PostgreSQL nodes under Patroni, Redis + replica + three Sentinels, HAProxy in
# front of three `trustd serve` replicas, all on loopback under one scratch directory
# (deploy/ha/topology.py; root, as PostgreSQL runs as the postgres user). Ctrl-C stops it.
ha: ha-deps
	$(BIN)/python deploy/ha/topology.py

# Faults injected one at a time into that topology under load, with figures
# (bench/ha_faults.py; several minutes, so not part of `make test`).
ha-test: ha-deps
	$(BIN)/python bench/ha_faults.py

# Back to a fresh checkout's state for `make run`: the data directory (database, CA keys,
# admin socket, and the README walk-through's agent state), the SVID the banner's first
# command writes, and the tool caches. The virtualenv stays; `make distclean` removes it too.
clean:
	rm -rf var demo .mypy_cache .ruff_cache .pytest_cache .hypothesis

distclean: clean
	rm -rf $(VENV) $(K8S_VALIDATOR)/node_modules
