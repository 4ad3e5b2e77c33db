# Packaging and deployment targets (CI runs these on a fresh Debian 12 machine):
#   sudo make deps-packaging   apt + pip installs of every tool below (once)
#   sudo make image            daemonless arm64 image archive -> out/raopd-arm64.tar
#   sudo make image-test       run that image's raopd under qemu-user (needs image)
#   make k8s-check             render + validate the manifests, lint, tests/deploy
#   make docs                  regenerate docs/configuration.md + k8s/common/raopd.toml
# `image`/`image-test` need root: mmdebstrap extracts as root, the smoke test
# chroots into the image.
# The Python tools live in their own venv (TOOLS_VENV), not the project venv.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

OUT ?= out
TOOLS_VENV ?= $(OUT)/tools-venv
TOOLS_PY := $(TOOLS_VENV)/bin/python
TOOLS_STAMP := $(TOOLS_VENV)/.installed
# Debian's python3 (installed by deps-packaging), not whatever python3 comes first on PATH:
# a venv built from a Python under /root would not run for the user of `make k8s-check`.
HOST_PYTHON ?= /usr/bin/python3
ARCHIVE ?= $(OUT)/raopd-arm64.tar
# Kubernetes versions whose schemas the manifests must satisfy (oldest we
# claim to support and the newest kubernetes-validate ships).
K8S_VERSIONS ?= 1.28.0 1.37.0
KUSTOMIZE_DIRS := k8s k8s/daemonset k8s/web-example

# Debian packages: mmdebstrap (arm64 rootfs without emulation), the aarch64
# cross compiler + libc headers (pyalsaaudio), qemu-user-static (smoke test),
# python3-venv/pip (tools venv; build host Python must be 3.11 = bookworm's).
APT_PACKAGES := mmdebstrap debian-archive-keyring gcc-aarch64-linux-gnu \
    libc6-dev-arm64-cross binutils-aarch64-linux-gnu qemu-user-static \
    python3 python3-venv python3-pip git ca-certificates make

IMAGE_INPUTS := pyproject.toml container/requirements.txt container/build-arm64.sh \
    container/ocitar.py $(shell find raopd -type f ! -name '*.pyc' 2>/dev/null)

# The project's Python (the README's venv) for `make docs`.
PYTHON ?= .venv/bin/python

.PHONY: help deps-packaging tools image image-test k8s-check clean-image docs

help:
	@sed -n '2,10p' Makefile

# The settings reference and the example config are generated from raopd/config.py
# (tests/test_settings_surfaces.py fails when they are stale).
docs:
	$(PYTHON) -m raopd.config_docs --write

# Targets that must run as root say so first, instead of failing deep inside a tool.
NEED_ROOT = @[ "$$(id -u)" = 0 ] || { echo "make $(1): run as root (sudo make $(1)): $(2)" >&2; exit 1; }
# After `sudo make ...`, give $(OUT) back to the user who ran sudo, so that a later
# `make k8s-check` without sudo can write its renders there.
GIVE_BACK = if [ -n "$${SUDO_UID:-}" ] && [ -d $(OUT) ]; then chown -R "$$SUDO_UID:$${SUDO_GID:-$$SUDO_UID}" $(OUT); fi

deps-packaging:
	$(call NEED_ROOT,deps-packaging,it installs Debian packages)
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(APT_PACKAGES)
	$(MAKE) tools
	$(GIVE_BACK)

tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): container/tools-requirements.txt
	$(HOST_PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_PY) -m pip install --quiet --disable-pip-version-check -r container/tools-requirements.txt
	touch $@

image: $(ARCHIVE)

$(ARCHIVE): $(IMAGE_INPUTS) | $(TOOLS_STAMP)
	$(call NEED_ROOT,image,mmdebstrap extracts the image's files as root)
	PYTHON=$(TOOLS_PY) ARCHIVE=$(ARCHIVE) OUT=$(OUT) container/build-arm64.sh
	$(GIVE_BACK)

image-test: $(ARCHIVE) | $(TOOLS_STAMP)
	$(call NEED_ROOT,image-test,the smoke test chroots into the image)
	PYTHON=$(TOOLS_PY) WORK=$(OUT)/smoke container/smoke-test.sh $(ARCHIVE)
	$(GIVE_BACK)

k8s-check: | $(TOOLS_STAMP)
	mkdir -p $(OUT)/k8s
	for dir in $(KUSTOMIZE_DIRS); do \
	    name=$$(echo $$dir | tr / -); \
	    $(TOOLS_VENV)/bin/kubectl kustomize $$dir > $(OUT)/k8s/$$name.yaml; \
	    for v in $(K8S_VERSIONS); do \
	        $(TOOLS_VENV)/bin/kubernetes-validate --strict --quiet -k $$v $(OUT)/k8s/$$name.yaml; \
	    done; \
	    echo "k8s-check: $$dir renders and validates (strict) against $(K8S_VERSIONS)"; \
	done
	$(TOOLS_VENV)/bin/hadolint container/Dockerfile
	$(TOOLS_VENV)/bin/yamllint --strict -c .yamllint.yaml k8s/
	$(TOOLS_PY) -m pytest -q -p no:cacheprovider --confcutdir=tests/deploy \
	    -W ignore::pytest.PytestConfigWarning tests/deploy

clean-image:
	rm -rf $(OUT)/arm64-build $(OUT)/smoke $(OUT)/k8s $(ARCHIVE) $(ARCHIVE:.tar=.json)
