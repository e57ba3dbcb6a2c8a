# The two commands a newcomer types (see README):
#   make run    install composer-imp into the current Python environment, then run the quickstart
#   make test   install with the test extra, then run the whole test suite
PYTHON ?= python
PIP ?= $(PYTHON) -m pip

.PHONY: run test install install-test quickstart bench

install:
	$(PIP) install -e .

install-test:
	$(PIP) install -e '.[test]'
	@# FFCV builds from source and needs system libraries (CI installs them; see README). Without them its tests skip.
	$(PIP) install -e '.[ffcv]' || echo "composer-imp: ffcv not installed (apt-get install -y pkg-config libopencv-dev libturbojpeg0-dev, then make test); its tests will be skipped"


run: install quickstart

quickstart:
	$(PYTHON) run.py -f yamls/quickstart.yaml

test: install-test
	@# Two workers, one test file each at a time (module fixtures shared): the suite is mostly subprocesses.
	$(PYTHON) -m pytest -q -n 2 --dist loadfile tests

bench:
	$(PYTHON) benchmarks/mask_overhead.py
