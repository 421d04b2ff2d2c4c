# Two commands do all the set-up: `make test` and `make demo`. Each creates the venvs it needs when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
# checkov pins boto3 1.35, which cannot share .venv with the pipeline's boto3 1.42.68: it gets its own venv.
TOOLS_VENV   := .venv-tools
TOOLS_STAMP  := $(TOOLS_VENV)/.installed
# diagrams + graphviz, only for redrawing images/architecture.png (CI never needs them).
IMAGES_VENV  := .venv-images
IMAGES_STAMP := $(IMAGES_VENV)/.installed

.PHONY: help venv tools lint format typecheck test demo bench fuzz cost images charts architecture console-files deploy destroy clean

help:
	@echo "make test          - lint, type-check and run every test (creates .venv and .venv-tools)"
	@echo "make demo          - run the whole pipeline locally on an embedded S3; output in local/out/ (creates .venv)"
	@echo "make bench         - performance figures, docs/performance.md (ARGS=--quick: smoke run; ARGS=--loop: the 50-run loop)"
	@echo "make fuzz          - the transformer's differential test with 40x the examples (SCALE=...; ~9 min)"
	@echo "make cost          - the monthly AWS bill, priced from a simulated day of the real handlers (creates .venv)"
	@echo "make images        - redraw the committed pictures in images/ (the diagram needs graphviz: apt-get as root)"
	@echo "make console-files - the console path's files filled in, in build/console/:"
	@echo "                     make console-files BUCKET=<bucket> ACCOUNT=<12 digits> [REGION=us-east-1]"
	@echo "make deploy        - deploy the stack to AWS: make deploy BUCKET=<new bucket> EMAIL=<alerts address>"
	@echo "make destroy       - delete the stack after confirmation (YES=1 skips it; the data bucket is kept)"
	@echo "make format        - apply ruff's formatting and safe fixes"
	@echo "make clean         - remove the venvs and local output"

$(STAMP): requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed; run: make PYTHON=python3.12 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	@touch $(STAMP)

venv: $(STAMP)

$(TOOLS_STAMP): infra/requirements-checkov.txt
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS_VENV)/bin/python -m pip install --quiet -r infra/requirements-checkov.txt
	@touch $(TOOLS_STAMP)

tools: $(TOOLS_STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The handlers share a module name (lambda_function), so mypy checks each on its own.
typecheck: venv
	$(BIN)/mypy lambda/generator/lambda_function.py
	$(BIN)/mypy lambda/transformer/lambda_function.py
	$(BIN)/mypy lambda/compactor/lambda_function.py
	$(BIN)/mypy tests local tools bench infra/diagram.py

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint typecheck tools
	$(BIN)/python -m pytest

demo: venv
	$(BIN)/python -m local.demo $(ARGS)

bench: venv
	$(BIN)/python -m bench.run $(ARGS)

# The differential test of the transformer's two paths (tests/test_transformer_paths.py) with a bigger
# budget of examples than make test gives it: SCALE times each test's own budget.
SCALE ?= 40
fuzz: venv
	FUZZ_SCALE=$(SCALE) $(BIN)/python -m pytest tests/test_transformer_paths.py -q -p no:cacheprovider --hypothesis-show-statistics $(ARGS)

cost: venv
	$(BIN)/python -m tools.cost $(ARGS)

$(IMAGES_STAMP): infra/requirements-diagram.txt
	$(PYTHON) -m venv $(IMAGES_VENV)
	$(IMAGES_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(IMAGES_VENV)/bin/python -m pip install --quiet -r infra/requirements-diagram.txt
	@touch $(IMAGES_STAMP)

images: charts architecture

# The committed charts: the demo on a fixed seed and a fixed window of seven complete UTC days, so every
# run draws the same bytes (local/charts.py fixes the rest). Its other output goes to local/out/ as usual.
CHARTS_RUN := --days 7 --end 2026-11-25T00:00Z --seed 42 --transactions-per-run 10 --bad-files 3
charts: venv
	$(BIN)/python -m local.demo $(CHARTS_RUN) --charts images

# Draws images/architecture.png with graphviz's dot (installed here with apt-get when run as root).
architecture: $(IMAGES_STAMP)
	@command -v dot >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && apt-get install -y -qq graphviz >/dev/null; } || { echo "make images needs graphviz's dot: apt-get install graphviz, or brew install graphviz"; exit 1; }
	$(IMAGES_VENV)/bin/python infra/diagram.py images/architecture.png

# The files a console user pastes, with {{BUCKET}}, {{REGION}} and {{ACCOUNT}} filled in (tools/console_files.py,
# standard library only: no venv needed, so it runs in CloudShell). Variables given on make's command line
# are in the recipe's environment, so the shell passes them on verbatim, whatever they hold.
CONSOLE_OUT ?= build/console
console-files:
	@$(PYTHON) -m tools.console_files --bucket "$${BUCKET-}" --region "$${REGION-}" --account "$${ACCOUNT-}" --out "$(CONSOLE_OUT)"

# Deployment to AWS: needs the AWS CLI and credentials; tests and CI never run these.
AWS       ?= aws
STACK     ?= ecommerce
ARTIFACTS ?= $(BUCKET)-artifacts
PARAMS    ?=

deploy:
	@test -n "$(BUCKET)" -a -n "$(EMAIL)" || { echo "usage: make deploy BUCKET=<new bucket name> EMAIL=<alert address> [STACK=$(STACK)] [PARAMS='Name=Value ...']"; exit 2; }
	$(AWS) s3api head-bucket --bucket $(ARTIFACTS) 2>/dev/null || $(AWS) s3 mb s3://$(ARTIFACTS)
	mkdir -p build
	$(AWS) cloudformation package --template-file infra/template.yaml --s3-bucket $(ARTIFACTS) --s3-prefix $(STACK) --output-template-file build/packaged.yaml
	$(AWS) cloudformation deploy --template-file build/packaged.yaml --stack-name $(STACK) --capabilities CAPABILITY_IAM --parameter-overrides BucketName=$(BUCKET) AlertEmail=$(EMAIL) $(PARAMS)
	$(AWS) cloudformation describe-stacks --stack-name $(STACK) --query "Stacks[0].Outputs" --output table

# Says which stack (its full ARN: account and region) and asks for its name before deleting; YES=1 skips the question.
destroy:
	@stack_id=$$($(AWS) cloudformation describe-stacks --stack-name "$(STACK)" --query "Stacks[0].StackId" --output text) \
	  || { echo "make destroy: no stack $(STACK) found with these credentials and region (choose another with STACK=<name>)"; exit 1; }; \
	echo "make destroy deletes the CloudFormation stack $(STACK):"; \
	echo "  $$stack_id"; \
	echo "and every resource in it except the data bucket, which is kept (DeletionPolicy: Retain)."; \
	if [ "$(YES)" != 1 ]; then \
	  printf 'Type the stack name (%s) to delete it: ' "$(STACK)"; \
	  read -r answer || answer=; \
	  [ "$$answer" = "$(STACK)" ] || { echo "Not deleted (the answer was not $(STACK); YES=1 skips the question)."; exit 1; }; \
	fi
	$(AWS) cloudformation delete-stack --stack-name $(STACK)
	$(AWS) cloudformation wait stack-delete-complete --stack-name $(STACK)
	@echo "Stack $(STACK) deleted. Its bucket is kept (DeletionPolicy: Retain); to delete it and all its data:"
	@echo "  $(AWS) s3 rb s3://<bucket> --force   and the artifacts bucket: $(AWS) s3 rb s3://<bucket>-artifacts --force"

clean:
	rm -rf $(VENV) $(TOOLS_VENV) $(IMAGES_VENV) build local/out bench/out .pytest_cache .mypy_cache .ruff_cache
