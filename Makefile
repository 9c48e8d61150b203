# The two commands of the README. Both create .venv if missing and install exact pinned versions.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.vaelab-installed
# A local directory of wheels (this workplace keeps the torch 2.13.0 CPU wheel in /opt/wheels).
WHEELS ?= /opt/wheels
FIND_LINKS := $(if $(wildcard $(WHEELS)/*.whl),--find-links $(WHEELS),)
RUN_DIR ?= runs/gaussian_mnist
CONFIG  ?= experiments/configs/gaussian_mnist.toml
PYTEST_ARGS ?=

.PHONY: run test lint install bench clean docs dist results

install: $(STAMP)

# `make run` needs the package alone; `make test` adds the dev tools and every optional extra the
# tests exercise (data formats, tracking backends, submitit) and the docs extra (the site's build
# test); each stamp is redone when the files that pin it change.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(FIND_LINKS) -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q $(FIND_LINKS) -c constraints.txt -e .
	$(BIN)/python -c "import torch, pyro; assert torch.__version__.startswith('2.13.0'), torch.__version__; print('torch', torch.__version__, '| pyro', pyro.__version__)"
	touch $(STAMP)

TEST_STAMP := $(VENV)/.vaelab-test-installed
$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q $(FIND_LINKS) -c constraints.txt -e '.[dev,sklearn,anndata,tensorboard,mlflow,submitit,docs]'
	touch $(TEST_STAMP)

# Train the Gaussian VAE on binarized MNIST (short budget), evaluate log p(x) by IS, write a report.
run: $(STAMP)
	$(BIN)/vaelab train $(CONFIG) --out $(RUN_DIR) --evaluate \
		$(if $(wildcard $(RUN_DIR)/checkpoints/last.pt),--resume,)
	@echo "report: $(RUN_DIR)/report.md"

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The documentation site (docs/conf.py: autodoc with MathJax, the README, the tutorial, the
# results) into docs/_build/html; warnings are errors. Installs the [docs] extra once.
DOCS_STAMP := $(VENV)/.vaelab-docs-installed
$(DOCS_STAMP): $(TEST_STAMP)
	$(BIN)/python -m pip install -q $(FIND_LINKS) -c constraints.txt -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(BIN)/python -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

# An sdist and a wheel into dist/, the wheel built from the sdist (as pip builds from PyPI) with
# the pinned setuptools of .venv. .ci/wheel_check installs and runs the wheel.
dist: $(TEST_STAMP)
	rm -rf dist
	$(BIN)/python -m build --no-isolation --outdir dist . > /dev/null
	@ls -l dist

lint: $(TEST_STAMP)
	$(BIN)/ruff check vaelab tests experiments benchmarks examples
	$(BIN)/mypy vaelab/model vaelab/guide vaelab/inference vaelab/runs

# Every benchmark, its tables gathered into benchmarks/results.md (ratios measured in one run).
BENCHMARKS := startup train_step epoch marginal limit ais shards estimators rows
bench: $(TEST_STAMP)
	@set -e; out=benchmarks/results.md; tmp=$$out.tmp; \
	echo "# Benchmark results" > $$tmp; \
	echo "" >> $$tmp; echo "\`make bench\` on $$(nproc) cores, $$(date -u +%Y-%m-%d)." >> $$tmp; \
	for b in $(BENCHMARKS); do \
	  echo "" >> $$tmp; echo "## benchmarks/$$b.py" >> $$tmp; echo "" >> $$tmp; \
	  $(BIN)/python benchmarks/$$b.py | tee -a $$tmp; \
	done; mv $$tmp $$out; echo "wrote $$out"

# The table block and the chart of experiments/results/reproduce.md, from the committed per-run
# files under experiments/results/reproduce/ alone (no run folder, no checkpoint)
results: $(STAMP)
	$(BIN)/python -m vaelab.runs.tables --into experiments/results/reproduce.md \
	  --plot experiments/results/reproduce.png experiments/results/reproduce

clean:
	rm -rf $(VENV) build dist *.egg-info docs/_build docs/_generated docs/_autosummary
