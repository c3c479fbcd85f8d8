"""The headroom benchmark (issue #11): 10-NN purity, the learned gains it reads, its JSON."""

import json

import numpy as np

from bench import headroom
from tell import verdict


def test_neighbour_purity_counts_the_neighbours_with_the_rows_label():
    # Two tight pairs far apart: each row's nearest neighbour is its pair, the next ones the
    # other pair. With 1 neighbour every label agrees; with 3, one of three does.
    X = np.array([[1, 0], [0.99, 0.14], [0, 1], [0.14, 0.99]], np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = np.array([0, 0, 1, 1])
    assert headroom.neighbour_purity(X, y, n_neighbours=1) == 1.0
    assert np.isclose(headroom.neighbour_purity(X, y, n_neighbours=3), 1 / 3)
    y_mixed = np.array([0, 1, 0, 1])  # labels across the pairs: no neighbour agrees
    assert headroom.neighbour_purity(X, y_mixed, n_neighbours=1) == 0.0


def test_neighbour_purity_is_the_same_in_blocks(monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 8)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = rng.integers(0, 3, 50)
    whole = headroom.neighbour_purity(X, y)
    monkeypatch.setattr(verdict, "_CHUNK_ROWS", 7)
    assert headroom.neighbour_purity(X, y) == whole


def _quality_json(path, identity_acc, learned):
    summary = {"TELL identity": {"acc": {"mean": identity_acc}}}
    summary.update({f"TELL {e}": {"acc": {"mean": acc}} for e, acc in learned.items()})
    path.write_text(json.dumps({"summary": summary}))


def test_learned_gain_prefers_the_current_defaults_then_earlier_runs(tmp_path):
    _quality_json(tmp_path / "quality-digits-defaults.json", 0.79, {"conv": 0.88})
    _quality_json(
        tmp_path / "quality-digits-defaults-pretrain100.json", 0.80, {"mlp": 0.875, "conv": 0.81}
    )
    gains = headroom.learned_gain("digits", tmp_path)
    assert gains["conv"] == {"gain": 0.09, "source": "quality-digits-defaults.json"}
    assert gains["mlp"] == {"gain": 0.075, "source": "quality-digits-defaults-pretrain100.json"}
    assert headroom.learned_gain("mnist", tmp_path) == {}


def test_main_writes_a_table_the_readme_renders(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    X = np.repeat(np.eye(3, 6, dtype=np.float32), 20, axis=0) + rng.normal(0, 0.05, (60, 6))
    y = np.repeat(np.arange(3), 20)
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    monkeypatch.setattr(headroom, "load_rows", lambda name: (X, y))
    out = tmp_path / "headroom.json"
    result = headroom.main(["--dataset", "digits", "--results", str(tmp_path), "--out", str(out)])
    assert json.loads(out.read_text()) == result
    (row,) = next(iter(result["tables"].values()))
    assert row["data"] == "digits" and row["rows"] == 60 and row["k"] == 3
    assert row["knn10_purity"] == 1.0 and row["kmeans_acc"] == 1.0 and row["headroom"] == 0.0
    assert row["mlp_gain"] is None and row["gain_sources"] is None
    assert result["machine"]["load_avg_end"] is not None
