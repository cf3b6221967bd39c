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
