"""`import mtlkit` loads no heavy optional module: they are imported when first used."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mtlkit

# The subprocess imports the mtlkit that this test process imported.
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(Path(mtlkit.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
}
HEAVY = ["torchmetrics", "matplotlib", "tensorboard", "torch.utils.tensorboard", "scipy", "pandas", "networkx", "yaml"]


def test_import_mtlkit_loads_no_heavy_optional_module():
    code = f"import json, sys, mtlkit; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True, env=ENV)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_heavy_modules_exist_so_the_check_can_fail():
    # networkx is a core dependency: a graph's `g` imports it on first access.
    code = "import json, sys, mtlkit, torch; mtlkit.MTLModel([{'name': 'a', 'layers': torch.nn.Identity()}], ['a']).g; print('networkx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True, env=ENV)
    assert out.stdout.strip().splitlines()[-1] == "True"


FIT = """
import json, sys, torch
import mtlkit
from torch import nn
torch.manual_seed(0)
X, Y = torch.randn(40, 3), torch.randint(0, 2, (40,))
loaders = [mtlkit.DictDataLoader(mtlkit.DictDataset("d", split, {"x": X}, {"t": Y}), batch_size=8) for split in ("train", "valid")]
task = mtlkit.Task("t", {"m": nn.Linear(3, 2)}, [mtlkit.Operation("m", [("_input_", "x")])], scorer=mtlkit.Scorer(METRICS))
mtlkit.Trainer(n_epochs=2, progress_bar=False, seed=0).fit(mtlkit.MultitaskClassifier([task]), loaders)
print(json.dumps("torchmetrics" in sys.modules))
"""


def _fit_imports_torchmetrics(metrics: list[str]) -> bool:
    code = FIT.replace("METRICS", repr(metrics))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True, env=ENV)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_fit_scoring_accuracy_does_not_import_torchmetrics():
    assert _fit_imports_torchmetrics(["accuracy", "f1"]) is False


def test_roc_auc_imports_torchmetrics_when_scored_so_the_check_can_fail():
    assert _fit_imports_torchmetrics(["accuracy", "roc_auc"]) is True
