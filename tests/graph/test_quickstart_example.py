"""examples/torchmtl_quickstart.py runs, and the losses of all three tasks fall."""

import importlib.util
from pathlib import Path

from mtlkit.data.synthetic import QuickstartDataset

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "torchmtl_quickstart.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("torchmtl_quickstart", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_trains_and_every_task_loss_falls(capsys):
    results = _load_example().main(epochs=3, batch_size=32, lr=3e-3)
    assert list(results) == ["Task1", "Task2", "Task3"]
    for task, (before, after) in results.items():
        assert after < 0.8 * before, f"{task}: {before:.4f} -> {after:.4f}"
    assert "Task3" in capsys.readouterr().out


def test_synthetic_rows_match_the_readme_loop_layout():
    data = QuickstartDataset(n=10, seed=1)
    x, y = data[3]
    assert x.shape == (16,) and [t.shape for t in y] == [(1,), (1,), (1,)]
    assert set(data.y2.unique().tolist()) <= {0.0, 1.0}
    assert QuickstartDataset(n=10, seed=1).X.equal(data.X)
