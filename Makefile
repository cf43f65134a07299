# The two entry points a new user needs: `make demo` and `make test`.
# Both create .venv on first use, installing through constraints.txt (offline-friendly pins).
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared/data

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

.PHONY: setup test test-all demo lint
setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m 'not gpu'

# The main job on bundled data (demo/: a real COCO-trained Yolo-Fastest and 80 COCO images):
# prune 30% of its weights with global ADMM, print dense vs pruned, then run the pruned weights
# on a street clip. Offline; about 2 minutes after setup on 2 CPU cores.
demo: setup
	$(VENV)/bin/yolo-prune prune --cfg cfg/yolo-fastest-1.1-xl.cfg --out out/demo/prune
	$(VENV)/bin/yolo-prune detect --weights out/demo/prune/pruned.sparse \
		--source demo/street.mp4 --out out/demo/video

lint: setup
	$(VENV)/bin/ruff check yolo_prune tests scripts
