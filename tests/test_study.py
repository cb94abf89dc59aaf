"""`mnist-cnn study` on a tiny budget: a well-formed table, right cost columns, files written."""

import json

from mnist_cnn.cli import main
from mnist_cnn.insight.explain import summary
from mnist_cnn.model import ModelConfig


def test_study_tiny_budget(mnist_dir, tmp_path, capsys):
    assert main(["study", "--groups", "pooling", "--train-subset", "256", "--test-subset", "300", "--epochs", "1",
                 "--seeds", "2", "--data-dir", str(mnist_dir), "--out", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["rows"]
    assert [r["variant"] for r in rows] == ["2/2 (tutorial)", "3/2 overlap", "4/4"]
    assert rows[0]["params"] == 225_034 and rows[1]["params"] == summary(ModelConfig(pool_kernel=3))["params"]
    assert rows[2]["params"] == 28_426  # 4/4: 26 -> 6 -> 4 -> 1, fc1 64*128+128 = 8,320
    for r in rows:
        assert len(r["test_accuracies"]) == 2 and all(0 <= a <= 100 for a in r["test_accuracies"])
        assert r["seconds_per_epoch_60k"] > 0 and r["images_per_s"] > 0
    assert out["settings"]["train_images"] == 256 and out["settings"]["test_images"] == 300
    table = (tmp_path / "study.md").read_text().splitlines()
    assert table[2].startswith("| group | variant | params | MACs") and len(table) == 4 + len(rows)
    assert all(line.count("|") == 8 for line in table[2:])
    assert (tmp_path / "study.png").read_bytes()[:4] == b"\x89PNG"
