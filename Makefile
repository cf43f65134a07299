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

demo: setup
	$(VENV)/bin/yolo-prune info cfg/yolov3-tiny.cfg --size 416 \
		--weights $(SHARED)/weights/yolov3-tiny.weights
	$(VENV)/bin/yolo-prune detect --cfg cfg/yolov3-tiny.cfg \
		--weights $(SHARED)/weights/yolov3-tiny.weights --names cfg/coco.names \
		--source $(SHARED)/images --out out/demo/images
	$(VENV)/bin/yolo-prune detect --cfg cfg/yolov3-tiny.cfg \
		--weights $(SHARED)/weights/yolov3-tiny.weights --names cfg/coco.names \
		--source $(SHARED)/video/street_360p.mp4 --out out/demo/video

lint: setup
	$(VENV)/bin/ruff check yolo_prune tests scripts
