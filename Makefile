# mnc_d2: the two commands of the README are `make demo` and `make test`.
# Both create ./.venv (Python 3.11) with pinned versions on first use; re-runs take seconds.

PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.mnc_d2-setup-done
# Everything that changes what gets installed; editing any of them re-runs the set-up.
SETUP_INPUTS := requirements/requirements.txt requirements/constraints.txt setup.py \
                tools/install_detectron2.py tools/pypi_fetch.py mnc_d2/viewer/assets.py

.PHONY: setup demo test clean-venv

setup: $(STAMP)

$(STAMP): $(SETUP_INPUTS)
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -r requirements/requirements.txt -c requirements/constraints.txt
	$(PY) tools/install_detectron2.py
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m mnc_d2.viewer.assets || echo "MapLibre GL JS not vendored (needs npm once): tools/view.py will say so"
	$(PY) -c "import mnc_d2, detectron2; print('mnc_d2 ready on detectron2', detectron2.__version__)"
	@touch $(STAMP)

test: setup
	$(PY) -m pytest tests

demo: setup
	$(PY) tools/demo.py

clean-venv:
	rm -rf $(VENV)
