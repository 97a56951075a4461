"""metrics.jsonl and the loss.png plot of a run."""

from __future__ import annotations

import json

from ee_vla.training.metrics import MetricsLog


def _axes_of(fig, label: str):
    return [ax for ax in fig.axes if label in [line.get_label() for line in ax.get_lines()]]


def test_plot_puts_decoding_counts_on_their_own_axes_and_scores_on_0_1(tmp_path):
    import matplotlib.pyplot as plt

    log = MetricsLog(tmp_path, 0)
    for step in range(1, 7):
        log.write({"step": step, "loss": 5.0 / step, "ar_loss": 4.0 / step})
    for step, speedup in ((3, 9.5), (6, 10.2)):
        log.write(
            {
                "step": step,
                "loss": 1.0,
                "eval/forward_speedup": speedup,
                "eval/jacobi_iterations": 10.5 / speedup - 1,
                "eval/token_acc": 0.4,
                "eval/first_token_acc": 0.3,
                "eval/start_action_cos": 0.8,
                "eval/action_l1": 0.2,
            }
        )
    fig = log.figure("bc (run)")
    try:
        (speed_ax,) = _axes_of(fig, "eval/forward_speedup")
        (iter_ax,) = _axes_of(fig, "eval/jacobi_iterations")
        (score_ax,) = _axes_of(fig, "eval/token_acc")
        (loss_ax,) = _axes_of(fig, "loss")
        assert len({id(speed_ax), id(iter_ax), id(score_ax), id(loss_ax)}) == 4
        assert _axes_of(fig, "eval/first_token_acc") == _axes_of(fig, "eval/start_action_cos") == [score_ax]
        assert score_ax.get_ylim() == (0.0, 1.0)
        assert score_ax.get_ylabel() and "speedup" in speed_ax.get_ylabel() and "(x)" in speed_ax.get_ylabel()
        assert "iterations" in iter_ax.get_ylabel()
        assert speed_ax not in _axes_of(fig, "eval/action_l1")
        assert all(ax.get_xlabel() == "step" for ax in (speed_ax, score_ax, loss_ax))
    finally:
        plt.close(fig)
    log.plot("bc (run)")
    assert log.plot_path.stat().st_size > 1000
    assert [json.loads(x)["step"] for x in log.path.read_text().splitlines()] == [1, 2, 3, 4, 5, 6, 3, 6]


def test_a_resumed_log_keeps_the_rows_up_to_its_checkpoint(tmp_path):
    log = MetricsLog(tmp_path, 0)
    for step in range(1, 6):
        log.write({"step": step, "loss": 1.0})
    resumed = MetricsLog(tmp_path, 3)
    assert [r["step"] for r in resumed.rows] == [1, 2, 3]
    assert [json.loads(x)["step"] for x in resumed.path.read_text().splitlines()] == [1, 2, 3]
    import matplotlib.pyplot as plt

    fig = resumed.figure("no evaluation yet")
    assert len(fig.axes) == 1  # losses only
    plt.close(fig)
