#!/usr/bin/env bash
# Build the part of ROS 2 Jazzy that ee_vla's ROS nodes (ros_nodes/, launch/) need, from source, into a
# prefix outside the repository: rclpy (rclpy.lifecycle included), Eclipse Cyclone DDS with
# rmw_cyclonedds_cpp as the only RMW (no Fast DDS, no Connext), the message packages ee_vla uses,
# launch, launch_ros, launch_testing(_ros) and the ros2 command with its launch, topic, lifecycle,
# param and node verbs. For machines without ROS 2 binaries (e.g. Debian); on Ubuntu 24.04 the
# ros-jazzy-* packages are quicker.
#
#   bash scripts/fetch_ros2_sources.sh    # the sources, into $ROS2_SRC (vcs import; see its --help)
#   bash scripts/build_ros2.sh            # or `make ros2`: fetch (when $ROS2_SRC is empty) and build
#   source ~/.cache/ee_vla/ros2-jazzy/setup.bash && make test-ros
#
#   bash scripts/build_ros2.sh --packages     # the packages it builds (colcon --packages-up-to)
#   bash scripts/build_ros2.sh --apt          # the Debian/Ubuntu packages it needs
#
# What it needs: a C/C++ compiler, cmake (Debian 12's 3.25 works), make, git, curl, the Debian -dev packages of --apt
# (the vendor packages find these system libraries instead of downloading their own; as root they
# are installed with apt-get, otherwise the script names them and stops), and a Python whose X.Y
# is the one ee_vla runs with ($PYTHON, default python3; rclpy's extensions are built for that X.Y).
# A build virtual environment, $PREFIX/venv (from $PYTHON, with colcon, empy 3, lark, numpy, ...
# from PyPI), runs the build and the `ros2` command. The Python modules the ROS packages import at
# run time that $PYTHON lacks (lark, argcomplete, psutil, ...) are installed into the prefix, so
# sourcing $PREFIX/setup.bash is all another Python X.Y environment (e.g. ee_vla's .venv) needs.
#
# Time and space, from scratch on 2 cores (JOBS=2, Debian 12): 7 min on otherwise idle cores (6 min
# 24 s the 100 packages, the rest the venv), 13 min while other work shared them; the sources 150 MB,
# the prefix 212 MB (its venv included), the build tree 211 MB (deletable). After a failure, rerun with
# --packages-skip-build-finished to go on where it stopped.
#
# pytest 9 cannot load the pytest plugins of Jazzy's launch_testing(_ros) (they use the removed hook
# argument `path`): ee_vla's pytest configuration (setup.cfg) disables them.
#
# Environment:
#   ROS2_SRC            the sources (default ~/.cache/ee_vla/ros2-jazzy-src)
#   EE_VLA_ROS2_PREFIX  the install prefix (default ~/.cache/ee_vla/ros2-jazzy)
#   ROS2_BUILD          colcon's build and log directories (default ~/.cache/ee_vla/ros2-jazzy-build)
#   PYTHON              the Python to build for (default python3)
#   JOBS                parallel compiles: colcon workers, one make job each (default 2)
# Extra arguments are passed to colcon build (e.g. --packages-select rclpy to rebuild one).
set -euo pipefail

ROS2_SRC=${ROS2_SRC:-$HOME/.cache/ee_vla/ros2-jazzy-src}
PREFIX=${EE_VLA_ROS2_PREFIX:-$HOME/.cache/ee_vla/ros2-jazzy}
ROS2_BUILD=${ROS2_BUILD:-$HOME/.cache/ee_vla/ros2-jazzy-build}
PYTHON=${PYTHON:-python3}
JOBS=${JOBS:-2}
HERE=$(cd "$(dirname "$0")" && pwd)

# What ee_vla uses; colcon builds these and everything they depend on.
PACKAGES=(
  rclpy
  rmw_cyclonedds_cpp
  builtin_interfaces
  rcl_interfaces
  lifecycle_msgs
  std_msgs
  sensor_msgs
  geometry_msgs
  trajectory_msgs
  diagnostic_msgs
  launch
  launch_ros
  launch_testing
  launch_testing_ros
  ros2cli
  ros2launch
  ros2topic
  ros2lifecycle
  ros2param
  ros2node
)
# Test-only packages that --packages-up-to would pull in, left out (BUILD_TESTING is off).
SKIP=(test_msgs ros2lifecycle_test_fixtures)

# Debian/Ubuntu packages: the compilers and tools, and the system libraries the vendor packages use.
APT=(build-essential cmake git pkg-config libyaml-dev libspdlog-dev pybind11-dev)

# Python modules the built packages import at run time: module=PyPI distribution.
RUNTIME_MODULES=(
  lark=lark
  yaml=pyyaml
  numpy=numpy
  packaging=packaging
  argcomplete=argcomplete
  psutil=psutil
  em=empy==3.3.4
  catkin_pkg=catkin_pkg
  dateutil=python-dateutil
  six=six
  pyparsing=pyparsing
  docutils=docutils
)

usage() { sed -n '2,39p' "$0" | sed 's/^# \{0,1\}//'; }

case ${1:-} in
  -h | --help) usage; exit 0 ;;
  --packages) printf '%s\n' "${PACKAGES[@]}"; exit 0 ;;
  --apt) printf '%s\n' "${APT[@]}"; exit 0 ;;
esac

log() { echo "build_ros2.sh: $*" >&2; }

# 1. System packages.
missing=()
for p in "${APT[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  elif command -v dpkg-query >/dev/null; then
    log "missing system packages; install them first: sudo apt-get install ${missing[*]}"
    exit 1
  else
    log "not a Debian/Ubuntu system: install the equivalents of ${APT[*]} and rerun"
  fi
fi

# 2. The build environment.
pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
venv=$PREFIX/venv
if [[ ! -x $venv/bin/colcon ]]; then
  log "creating $venv (Python $pyver) with the build tools"
  "$PYTHON" -m venv --clear "$venv"
  # numpy: the version $PYTHON has, so rosidl's numpy-using extensions match it.
  numpy=$("$PYTHON" -c 'import numpy; print("numpy==" + numpy.__version__)' 2>/dev/null || echo numpy)
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q colcon-common-extensions catkin_pkg empy==3.3.4 lark "$numpy" pyyaml \
    "setuptools<70" packaging argcomplete psutil pytest vcstool
fi

# 3. Sources (vcs import with the venv's vcstool).
if [[ ! -d $ROS2_SRC/ros2/rclpy ]]; then
  log "no sources in $ROS2_SRC: fetching them"
  PATH=$venv/bin:$PATH ROS2_SRC=$ROS2_SRC bash "$HERE/fetch_ros2_sources.sh"
fi

# 4. The build.
export MAKEFLAGS=-j1 # JOBS colcon workers, one compile each
# shellcheck disable=SC1091
source "$venv/bin/activate"
log "building into $PREFIX (log: $ROS2_BUILD/log)"
start=$(date +%s)
colcon --log-base "$ROS2_BUILD/log" build \
  --base-paths "$ROS2_SRC" \
  --build-base "$ROS2_BUILD/build" \
  --install-base "$PREFIX" \
  --merge-install \
  --parallel-workers "$JOBS" \
  --event-handlers console_cohesion+ \
  --packages-up-to "${PACKAGES[@]}" \
  --packages-ignore "${SKIP[@]}" \
  "$@" \
  --cmake-args --no-warn-unused-cli -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release \
  -DPython3_EXECUTABLE="$venv/bin/python" -DPYTHON_EXECUTABLE="$venv/bin/python" \
  -DTRACETOOLS_TRACEPOINTS_EXCLUDED=ON -DBUILD_DDSPERF=OFF -DENABLE_SHM=OFF -DENABLE_SECURITY=OFF -DENABLE_SSL=OFF -DENABLE_LTO=OFF
deactivate

# 5. Run-time Python modules $PYTHON lacks, into the prefix's site-packages (on PYTHONPATH once
# setup.bash is sourced).
site=$PREFIX/lib/python$pyver/site-packages
need=()
for entry in "${RUNTIME_MODULES[@]}"; do
  "$PYTHON" -c "import ${entry%%=*}" 2>/dev/null || need+=("${entry#*=}")
done
if [[ ${#need[@]} -gt 0 ]]; then
  log "installing ${need[*]} into $site"
  "$venv/bin/pip" install -q --no-deps --target "$site" "${need[@]}"
fi

log "done in $(($(date +%s) - start)) s: source $PREFIX/setup.bash (RMW_IMPLEMENTATION=rmw_cyclonedds_cpp)"
