"""TrainConfig / DistillConfig: validation names the field, tyro renders them, no heavy imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ee_vla.training import DistillConfig, TrainConfig


def test_defaults_are_valid():
    cfg = TrainConfig(data=("a.hdf5",), out_dir="out")
    assert cfg.chunk_size is None and cfg.preset == "small"  # a new model: chunks of 3
    d = DistillConfig(data=("a.hdf5",), out_dir="out", teacher="t")
    assert d.mixed_labels and d.mixed_label_threshold == 0.1 and d.consistency_weight == d.ar_weight == 1.0
    assert d.label_smoothing == 0.1 and not d.augment


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (TrainConfig, {"steps": 0}, "TrainConfig.steps"),
        (TrainConfig, {"data": ()}, "TrainConfig.data"),
        (TrainConfig, {"chunk_size": 0}, "TrainConfig.chunk_size"),
        (TrainConfig, {"lr": -1.0}, "TrainConfig.lr"),
        (TrainConfig, {"aug_shift": 0.7}, "TrainConfig.aug_shift"),
        (TrainConfig, {"dtype": "float16"}, "TrainConfig.dtype"),
        (TrainConfig, {"preset": "huge"}, "TrainConfig.preset"),
        (DistillConfig, {"mixed_label_threshold": -0.1}, "DistillConfig.mixed_label_threshold"),
        (DistillConfig, {"inits": ("guess",)}, "DistillConfig.inits"),
        (DistillConfig, {"state_sampling": "last"}, "DistillConfig.state_sampling"),
        (DistillConfig, {"consistency": "both"}, "DistillConfig.consistency"),
        (DistillConfig, {"consistency_weight": 0.0, "ar_weight": 0.0}, "DistillConfig.consistency_weight"),
        (DistillConfig, {"label_smoothing": 1.0}, "DistillConfig.label_smoothing"),
    ],
)
def test_validation_names_the_field(cls, kwargs, field):
    base = {"data": ("a.hdf5",), "out_dir": "out"}
    if cls is DistillConfig:
        base["teacher"] = "t"
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        cls(**{**base, **kwargs})


def test_tyro_cli_maps_fields():
    import tyro

    cfg = tyro.cli(
        TrainConfig,
        args=["--data", "a.hdf5", "b/", "--out-dir", "runs/x", "--chunk-size", "1", "--no-augment", "--use-proprio"],
    )
    assert cfg.data == ("a.hdf5", "b/") and cfg.chunk_size == 1 and not cfg.augment and cfg.use_proprio
    d = tyro.cli(
        DistillConfig,
        args=[
            "--data",
            "a.hdf5",
            "--out-dir",
            "o",
            "--teacher",
            "t",
            "--mixed-label-threshold",
            "0.2",
            "--inits",
            "warm",
            "prompt",
            "--no-mixed-labels",
            "--state-sampling",
            "all",
        ],
    )
    assert d.mixed_label_threshold == 0.2 and d.inits == ("warm", "prompt") and not d.mixed_labels
    assert d.state_sampling == "all"


def test_config_import_is_light():
    code = "import sys, ee_vla.training; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
