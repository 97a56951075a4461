# The two quickstart commands: `make demo` (set up + run the main job) and `make test`.
# Everything installs into ./.venv. torch comes first, alone (--no-deps: only torch is looked up on
# the extra index), from PyTorch's CPU wheel index (TORCH_INDEX) with the CPU build pinned in
# constraints-cpu.txt, so a CPU machine never downloads CUDA wheels; the package and every other
# dependency, torch's included, then install from PyPI against that torch.
# GPU users: install the torch build for your CUDA first, then `pip install -e .[sim,dds,test]`.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= sim,metaworld,dds,test
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# Headless MuJoCo rendering: without a display, importing sim_envs sets MUJOCO_GL=egl (a GPU's EGL, or
# Mesa's software EGL on a CPU), or osmesa when only OSMesa is installed; a value you set is kept.

.PHONY: setup sysdeps demo test lint clean

$(VENV)/.installed: setup.py constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-deps --extra-index-url $(TORCH_INDEX) -c constraints-cpu.txt torch
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
	$(VENV)/bin/ee-vla eval --policy ee_vla/checkpoints/default --env ee_vla/Reach-v0 --env ee_vla/PickCube-v0 --env ee_vla/Push-v0 --env ee_vla/Place-v0 --compare ar ceed --episodes 5 --num-envs 4 --seed 100000

# Where the machine provides a prebuilt ROS 2 next to the checkout (../shared/ros2-jazzy, as on CI
# machines that have one), `make test` runs the ROS tests against it too
# (as `make test-ros`); elsewhere they skip and the run's summary says so in one line.
SHARED_ROS2 := $(wildcard ../shared/ros2-jazzy/setup.bash)

test: setup
ifeq ($(SHARED_ROS2),)
	$(PY) -m pytest -q
else
	$(MAKE) --no-print-directory test-ros ROS2_PREFIX="$(abspath ../shared/ros2-jazzy)"
	$(PY) -m pytest -q --ignore tests/ros_nodes
endif

# ROS 2 Jazzy from source (Debian, or any machine without ROS 2 binaries): `make ros2` builds what
# ros_nodes/ needs into $(ROS2_PREFIX) for the venv's Python (scripts/build_ros2.sh says what and how
# long); `make test-ros` runs tests/ros_nodes against it over Cyclone DDS.
ROS2_PREFIX ?= $(or $(EE_VLA_ROS2_PREFIX),$(if $(SHARED_ROS2),$(abspath ../shared/ros2-jazzy),$(HOME)/.cache/ee_vla/ros2-jazzy))

.PHONY: ros2 test-ros

ros2: $(VENV)/.installed
	EE_VLA_ROS2_PREFIX="$(ROS2_PREFIX)" PYTHON="$(abspath $(PY))" bash scripts/build_ros2.sh

test-ros: setup
	@test -f "$(ROS2_PREFIX)/setup.bash" || { echo "no ROS 2 in $(ROS2_PREFIX): run make ros2 first"; exit 1; }
	bash -c 'source "$(ROS2_PREFIX)/setup.bash" && export RMW_IMPLEMENTATION=$${RMW_IMPLEMENTATION:-rmw_cyclonedds_cpp} && \
	  $(PY) -m pytest -q tests/ros_nodes/test_ros_node_fakes.py && \
	  $(PY) -m pytest -q tests/ros_nodes --ignore tests/ros_nodes/test_ros_node_fakes.py'

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) outputs .pytest_cache
