"""Importing the meningioma analyzer is light: torch loads only when a case is analysed.

The node imports every analyzer class at start-up to validate route settings;
torch and torchvision cost seconds and hundreds of MB there.
"""

from __future__ import annotations

import json
import subprocess
import sys


def _modules_after(statement: str) -> dict[str, bool]:
    code = (
        f"{statement}\n"
        "import json, sys\n"
        "print(json.dumps({name: name in sys.modules for name in ('torch', 'torchvision', 'radiomics')}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_analyzer_module_leaves_torch_unloaded() -> None:
    loaded = _modules_after("import analyzers.meningioma.analyzer as module; module.MeningiomaSettings()")
    assert loaded == {"torch": False, "torchvision": False, "radiomics": False}


def test_the_control_import_does_load_torch() -> None:
    # The check above can fail: the module that holds the network does load torch.
    loaded = _modules_after("import analyzers.meningioma.deep_features")
    assert loaded["torch"] and loaded["torchvision"]
