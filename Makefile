# The two quickstart commands: `make demo` (set up + run the main job) and `make test`.
# Everything installs into ./.venv; torch is pinned to the local CPU build (constraints-cpu.txt)
# so a CPU machine never downloads CUDA wheels. GPU users: install torch first, then
# `pip install -e .[sim,dds,test]` without the constraints file.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= sim,metaworld,dds,test
# Headless MuJoCo rendering: the code picks MUJOCO_GL (osmesa on a CPU, egl on a GPU) unless you set it.

.PHONY: setup sysdeps demo test lint clean

$(VENV)/.installed: setup.py constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints-cpu.txt -e ".[$(EXTRAS)]"
	touch $@

# System libraries for headless software rendering (Debian/Ubuntu): Mesa's EGL (MUJOCO_GL=egl) and
# OSMesa (MUJOCO_GL=osmesa). Skipped when present; a hint is printed when not root.
sysdeps:
	@if ldconfig -p | grep -q 'libEGL_mesa.so' && ldconfig -p | grep -q 'libOSMesa.so'; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 >/dev/null; \
	else echo "ee_vla: for headless rendering install Mesa (Debian: libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6)"; fi

setup: sysdeps $(VENV)/.installed

demo: setup
	$(VENV)/bin/ee-vla eval --policy ee_vla/checkpoints/default --env ee_vla/Reach-v0 --env ee_vla/PickCube-v0 --env ee_vla/Push-v0 --env ee_vla/Place-v0 --compare ar ceed --episodes 5 --num-envs 4 --seed 100000 --output-dir outputs/demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) outputs .pytest_cache
