#!/usr/bin/env bash
# Fetch the ROS 2 Jazzy sources that scripts/build_ros2.sh builds: the repositories below, out of
# ROS 2's Jazzy list (ros2/ros2, branch jazzy, ros2.repos), into $ROS2_SRC, one directory each.
#
#   bash scripts/fetch_ros2_sources.sh                    # vcs import from GitHub (needs vcstool)
#   bash scripts/fetch_ros2_sources.sh --list             # print the repositories and exit
#   bash scripts/fetch_ros2_sources.sh --mirror DIR       # clone from local bare repositories instead
#
# The default mode is what ROS 2's source install does, filtered to these repositories:
#   curl -sSL https://raw.githubusercontent.com/ros2/ros2/jazzy/ros2.repos -o jazzy.repos
#   vcs import --input <jazzy.repos less the other repositories> "$ROS2_SRC"
# (vcstool: `pip install vcstool`). --mirror DIR clones DIR/<owner>+<name>/repo (bare git repositories
# with all branches, e.g. an offline copy) at the version jazzy.repos names; for a mirror that lacks
# that branch, MIRROR_FALLBACK below names the Jazzy-line tag or commit to use. --repos FILE reads a
# jazzy.repos already on disk instead of downloading it. About 150 MB (50 MB without git history).
#
# Environment: ROS2_SRC (default ~/.cache/ee_vla/ros2-jazzy-src). Existing checkouts are kept.
set -euo pipefail

ROS2_SRC=${ROS2_SRC:-$HOME/.cache/ee_vla/ros2-jazzy-src}
REPOS_URL=https://raw.githubusercontent.com/ros2/ros2/jazzy/ros2.repos

# The repositories that hold rclpy, rmw_cyclonedds_cpp, the message packages, launch, launch_ros and
# ros2cli, and everything they need to build (scripts/build_ros2.sh lists the packages).
REPOS=(
  ament/ament_cmake
  ament/ament_index
  ament/ament_package
  eclipse-cyclonedds/cyclonedds
  osrf/osrf_pycommon
  ros/ros_environment
  ros2/ament_cmake_ros
  ros2/common_interfaces
  ros2/launch
  ros2/launch_ros
  ros2/libyaml_vendor
  ros2/pybind11_vendor
  ros2/python_cmake_module
  ros2/rcl
  ros2/rcl_interfaces
  ros2/rcl_logging
  ros2/rclpy
  ros2/rcpputils
  ros2/rcutils
  ros2/rmw
  ros2/rmw_cyclonedds
  ros2/rmw_dds_common
  ros2/rmw_implementation
  ros2/ros2_tracing
  ros2/ros2cli
  ros2/rosidl
  ros2/rosidl_core
  ros2/rosidl_defaults
  ros2/rosidl_dynamic_typesupport
  ros2/rosidl_python
  ros2/rosidl_runtime_py
  ros2/rosidl_typesupport
  ros2/rpyutils
  ros2/spdlog_vendor
  ros2/unique_identifier_msgs
)

# Jazzy-line versions for mirrors without the jazzy branch: the release tag (or, for rcl, the
# version-bump commit 9.2.0) that Jazzy's branch starts from.
MIRROR_FALLBACK=(
  ros/ros_environment=4.2.0
  ros2/rcl=c19dab55e6a6c53922b49a1c35eea25252cfd783
  ros2/rosidl_core=0.2.0
  ros2/rosidl_dynamic_typesupport=0.1.2
  ros2/rpyutils=0.4.1
)

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }

mirror="" repos_file=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --list) printf '%s\n' "${REPOS[@]}"; exit 0 ;;
    --mirror) mirror=${2:?--mirror needs a directory}; shift 2 ;;
    --repos) repos_file=${2:?--repos needs a file}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "fetch_ros2_sources.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

mkdir -p "$ROS2_SRC"
if [[ -z $repos_file ]]; then
  repos_file=$ROS2_SRC/jazzy.repos
  if [[ ! -s $repos_file ]] && ! curl -sSfL "$REPOS_URL" -o "$repos_file"; then
    rm -f "$repos_file"
    echo "fetch_ros2_sources.sh: could not download $REPOS_URL (is GitHub reachable from here?); on a machine" \
      "without network access give local copies: --mirror DIR (bare repositories) and --repos FILE" >&2
    exit 1
  fi
fi

# jazzy.repos filtered to REPOS, in the same YAML layout.
filtered=$ROS2_SRC/ee_vla.repos
awk -v keep="$(printf '%s ' "${REPOS[@]}")" '
  BEGIN { n = split(keep, k, " "); for (i = 1; i <= n; i++) want[k[i]] = 1; print "repositories:" }
  /^  [^ ].*:$/ { name = substr($1, 1, length($1) - 1); on = (name in want); if (on) { print; seen[name] = 1 }; next }
  /^    / { if (on) print }
  END { for (r in want) if (!(r in seen)) { print "missing in the repos file: " r > "/dev/stderr"; bad = 1 }; exit bad }
' "$repos_file" >"$filtered"

if [[ -z $mirror ]]; then
  command -v vcs >/dev/null || { echo "fetch_ros2_sources.sh: needs vcstool (pip install vcstool)" >&2; exit 1; }
  vcs import --input "$filtered" "$ROS2_SRC"
  exit 0
fi

# --mirror: clone each repository from DIR/<owner>+<name>/repo at its jazzy.repos version.
fallback() {
  local entry
  for entry in "${MIRROR_FALLBACK[@]}"; do
    [[ ${entry%%=*} == "$1" ]] && { echo "${entry#*=}"; return; }
  done
}
awk '/^  [^ ].*:$/ { name = substr($1, 1, length($1) - 1) } /^    version:/ { print name, $2 }' "$filtered" |
  while read -r name version; do
    dest=$ROS2_SRC/$name
    [[ -d $dest/.git ]] && continue
    src=$mirror/${name/\//+}/repo
    [[ -d $src ]] || { echo "fetch_ros2_sources.sh: no mirror of $name at $src" >&2; exit 1; }
    ref=$version
    git --git-dir="$src" rev-parse -q --verify "$ref^{commit}" >/dev/null || ref=$(fallback "$name")
    [[ -n $ref ]] || { echo "fetch_ros2_sources.sh: $src has no '$version'" >&2; exit 1; }
    echo "$name: $ref"
    git clone -q --no-checkout "$src" "$dest"
    git -C "$dest" -c advice.detachedHead=false checkout -q "$ref"
  done
