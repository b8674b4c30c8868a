"""The reference path as a whole: gtn's law tests again with every numba kernel off (``GTN_NO_NUMBA=1``: the
pure-PyTorch code, the path that runs on GPUs), in a child pytest — the environment variable is read at
import, so it needs its own process. The modules that have kernels, and the losses built on them (of
test_structure.py only the remove_epsilon tests); tests that run both paths themselves (marked
``both_backends``) already ran in this process. Part of the README's test command, so CI runs it too."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["test_scoring.py", "test_topology.py", "test_compose.py", "test_dense.py", "test_ctc.py",
           "test_losses.py"]
# modules of which only the tests of one operation with a kernel are run again (-k)
PARTS = [("test_structure.py", "remove_epsilon")]


@pytest.mark.skipif(os.environ.get("GTN_NO_NUMBA", "") not in ("", "0"),
                    reason="this process already runs with GTN_NO_NUMBA=1 (the reference path)")
@pytest.mark.parametrize("modules,select", [(MODULES, None)] + [([m], k) for m, k in PARTS],
                         ids=["modules"] + [k for _, k in PARTS])
def test_gtn_laws_on_the_pure_pytorch_path(modules, select):
    env = {**os.environ, "GTN_NO_NUMBA": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow and not both_backends",
           *(["-k", select] if select else []), *[str(ROOT / "tests" / m) for m in modules]]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    tail = "\n".join((r.stdout + r.stderr).splitlines()[-40:])
    assert r.returncode == 0, f"the reference-path pass failed:\n{tail}"
    assert " passed" in tail and " failed" not in tail, tail
