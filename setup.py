"""ee_vla: one ament_python ROS 2 package that is also a pip package.

`pip install -e .[sim,dds,test]` for research use; `colcon build` on a ROS 2 machine installs the
same distribution plus the ROS resource marker, package.xml, launch files and parameter YAMLs.
"""

from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "ee_vla"
HERE = Path(__file__).resolve().parent
"""The source directory (symlinks resolved: `colcon build --symlink-install` runs a linked setup.py
from the build directory, where README.md is not)."""

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Fast VLA robot policies: CEED Jacobi decoding, action streaming, MuJoCo eval, ROS 2 node",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # The shipped policy's directory holds data only: listed as a package so its files install with it.
    packages=find_packages(include=["ee_vla", "ee_vla.*", "sim_envs", "sim_envs.*", "ros_nodes", "ros_nodes.*"])
    + ["ee_vla.checkpoints", "ee_vla.checkpoints.default"],
    include_package_data=True,
    package_data={"ee_vla.checkpoints.default": ["*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    install_requires=[
        "numpy>=1.24",
        # CPU machines: torch from PyTorch's CPU wheel index first (`make setup` does; constraints-cpu.txt).
        "torch>=2.4",
        "transformers>=4.57,<6",
        "tokenizers>=0.21",
        "safetensors>=0.4",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "tyro>=0.9",
        "pyyaml>=6",
    ],
    extras_require={
        "sim": ["gymnasium>=1.1", "mujoco>=3.3,<3.10", "imageio>=2.30", "h5py>=3.8"],
        "metaworld": ["metaworld==3.1.1"],
        "dds": ["cyclonedds>=0.10.5", "rosbags>=0.10"],
        # triton: the split-KV attention kernel's tests run in Triton's CPU interpreter without a GPU
        # (CUDA builds of torch ship it already)
        # LoRA distillation (DistillConfig.lora_rank)
        "lora": ["peft>=0.17"],
        # weight quantisation at load (RuntimeConfig.quantize: int8, fp8)
        "quant": ["torchao>=0.14"],
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "ruff>=0.6",
            "triton>=3.2",
            "peft>=0.17",
            "torchao>=0.14",
        ],
    },
    entry_points={
        "console_scripts": [
            "ee-vla = ee_vla.cli:main",
            "policy_node = ros_nodes.policy_node:main",
            "sim_bridge_node = ros_nodes.sim_bridge_node:main",
        ],
    },
    zip_safe=False,
)
