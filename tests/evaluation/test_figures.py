import numpy as np

from dpok.evaluation.figures import image_grid

ROW = np.full((2, 32, 32, 3), 200, dtype=np.uint8)


def _label_pixels(label: str) -> np.ndarray:
    grid = np.asarray(image_grid([ROW], row_labels=[label], label_width=120))
    return grid[:, :120]


def test_long_row_labels_are_wrapped_not_cut():
    # 120 px of label fit 20 characters per line: the end of this prompt used to be dropped.
    short = "[train/location] a blue square at"
    full = short + " the bottom"
    assert not np.array_equal(_label_pixels(full), _label_pixels(short[:20]))
    assert not np.array_equal(_label_pixels(full), _label_pixels(short))


def test_label_lines_stay_inside_their_row():
    grid = np.asarray(image_grid([ROW, ROW], row_labels=["a" * 50, "b"], label_width=120, gap=2))
    cell_h = 32 * 3
    first_row_labels = grid[2 : 2 + cell_h, :120]
    assert (first_row_labels < 128).any()
    # nothing of the first label spills into the gap rows between the two rows
    assert (grid[2 + cell_h : 4 + cell_h, :120] > 250).all()


def test_training_reward_curves_draw_a_line_per_category_and_refuse_bad_tables():
    import pandas as pd
    import pytest

    from dpok.evaluation.history import training_reward_curves

    rng = np.random.default_rng(0)
    rows = [(r, p, c, float(rng.random() < 0.3 + 0.005 * r)) for r in range(1, 81)
            for p, c in (("a red circle", "color"), ("two blue squares", "count")) for _ in range(4)]
    table = pd.DataFrame(rows, columns=["round", "prompt", "category", "reward"])
    one = np.asarray(training_reward_curves(table, trajectories_per_round=8))
    only_colour = np.asarray(training_reward_curves(table[table["category"] == "color"], trajectories_per_round=8))
    assert one.shape[2] == 3 and one.shape[1] > one.shape[0]
    assert not np.array_equal(one, only_colour)
    with pytest.raises(ValueError, match="reward"):
        training_reward_curves(table.drop(columns="reward"), trajectories_per_round=8)
    with pytest.raises(ValueError, match="empty"):
        training_reward_curves(table.iloc[:0], trajectories_per_round=8)


def test_learning_curves_add_a_value_panel_per_step_only_when_there_is_a_table():
    import pandas as pd

    from dpok.evaluation.history import learning_curves

    history = pd.DataFrame({"round": [1, 2, 3], "reward_mean": [0.1, 0.2, 0.3], "kl_bound_nats": [0.0, 1.0, 2.0]})
    by_step = pd.DataFrame({"step": [0, 1, 2], "value_variance_ratio": [1.0, 0.9, 0.3]})
    plain = learning_curves(history, value_by_step=by_step.iloc[:0])
    with_value = learning_curves(history, value_by_step=by_step)
    assert with_value.size[0] > plain.size[0] and with_value.size[1] == plain.size[1]  # one more panel
