"""gtn.kernels: the one dispatch policy (by backend, device and dtype), the same error for an impossible request
in every operation, the deprecated aliases, and numba without a writable cache (compiled anyway, one warning)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import gtn
from gtn import kernels

ROOT = Path(__file__).resolve().parents[1]


def _calls(backend):
    """Every public operation that chooses a kernel, called with ``backend`` on small CPU inputs."""
    g = torch.Generator().manual_seed(0)
    lin = gtn.linear_fsa([1, 2])
    d = gtn.DenseFsaVec(torch.randn(1, 3, 3, generator=g).log_softmax(-1), [3])
    lp = torch.randn(4, 1, 3, generator=g).log_softmax(-1)
    return {
        "forward_score": lambda: gtn.forward_score(lin, backend=backend),
        "viterbi_score": lambda: gtn.viterbi_score(lin, backend=backend),
        "viterbi_path": lambda: gtn.viterbi_path(lin, backend=backend),
        "forward_scores": lambda: gtn.forward_scores(lin, backend=backend),
        "backward_scores": lambda: gtn.backward_scores(lin, backend=backend),
        "arc_posteriors": lambda: gtn.arc_posteriors(lin, backend=backend),
        "compose": lambda: gtn.compose(lin, lin, backend=backend),
        "intersect": lambda: gtn.intersect(lin, lin, backend=backend),
        "compose_score": lambda: gtn.compose_score(lin, lin, backend=backend),
        "dense_forward_score": lambda: gtn.dense_forward_score(gtn.ctc_graph([1]), d, backend=backend),
        "ctc_loss": lambda: gtn.ctc_loss(lp, torch.tensor([[1]]), [4], [1], backend=backend),
        "remove_epsilon": lambda: gtn.remove_epsilon(gtn.concat(lin, lin), backend=backend),
    }


def test_policy_decisions(monkeypatch):
    f32, cpu, cuda = torch.float32, torch.device("cpu"), torch.device("cuda")
    monkeypatch.setitem(kernels._STATE, "enabled", True)  # as without GTN_NO_NUMBA=1
    assert kernels.select("scoring_numba", cpu, f32) is not None  # numba is a dependency
    assert kernels.select("scoring_numba", cpu, f32, "torch") is None
    assert kernels.select("scoring_numba", cuda, f32) is None  # auto: torch off the CPU
    for dt in (torch.float16, torch.bfloat16, torch.float64):  # the dtype decides the arithmetic, not the route
        assert kernels.select("scoring_numba", cpu, dt) is not None
    assert kernels.compute_dtype(torch.float16) == torch.float32 == kernels.compute_dtype(torch.bfloat16)
    assert kernels.compute_dtype(torch.float64) == torch.float64
    monkeypatch.setitem(kernels._STATE, "enabled", False)  # GTN_NO_NUMBA=1 / use_numba(False)
    assert kernels.select("scoring_numba", cpu, f32) is None
    assert kernels.select("scoring_numba", cpu, f32, "numba") is not None  # an explicit request still runs it
    with pytest.raises(gtn.FsaError, match="op: backend='numba' needs CPU tensors, got cuda"):
        kernels.select("scoring_numba", cuda, f32, "numba", "op")
    with pytest.raises(gtn.FsaError, match="op: backend must be 'auto', 'numba' or 'torch', got 'gpu'"):
        kernels.select("scoring_numba", cpu, f32, "gpu", "op")


@pytest.mark.parametrize("backend", ["auto", "numba", "torch"])
def test_every_operation_takes_the_backend_keyword(backend):
    """The same keyword everywhere, and the same results on every backend."""
    want = {k: f() for k, f in _calls("torch").items()}
    for name, f in _calls(backend).items():
        got = f()
        a, b = (got, want[name]) if isinstance(got, torch.Tensor) else (got.scores, want[name].scores)
        assert torch.allclose(a, b, atol=1e-6), name


def test_same_error_for_an_impossible_request_everywhere(monkeypatch):
    for name, f in _calls("gpu").items():
        with pytest.raises(gtn.FsaError, match=f"{name}: backend must be 'auto', 'numba' or 'torch', got 'gpu'"):
            f()
    # numba that does not import: "numba" refuses, naming the operation; "auto" runs torch and warns once
    monkeypatch.setattr(kernels, "_import", lambda name: (None, ImportError("no module named 'numba'")))
    monkeypatch.setattr(kernels, "_WARNED", set())
    monkeypatch.setitem(kernels._STATE, "enabled", True)  # as without GTN_NO_NUMBA=1
    for name, f in _calls("numba").items():
        # the wrappers name the operation that runs the kernel
        name = {"ctc_loss": "dense_forward_score", "intersect": "compose"}.get(name, name)
        with pytest.raises(gtn.FsaError, match=f"{name}: backend='numba' needs numba, which does not import"):
            f()
    with pytest.warns(RuntimeWarning, match="numba does not import"):
        want = gtn.forward_score(gtn.linear_fsa([1, 2]).detach())
    assert want == 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
def test_numba_on_cuda_is_refused_everywhere():
    cuda = torch.device("cuda")
    lin = gtn.linear_fsa([1, 2]).to(cuda)
    d = gtn.DenseFsaVec(torch.randn(1, 3, 3, device=cuda).log_softmax(-1), [3])
    calls = {"forward_score": lambda: gtn.forward_score(lin, backend="numba"),
             "compose": lambda: gtn.compose(lin, lin, backend="numba"),
             "compose_score": lambda: gtn.compose_score(lin, lin, backend="numba"),
             "dense_forward_score": lambda: gtn.dense_forward_score(gtn.ctc_graph([1]).to(cuda), d,
                                                                    backend="numba"),
             "remove_epsilon": lambda: gtn.remove_epsilon(lin, backend="numba")}
    for name, f in calls.items():
        with pytest.raises(gtn.FsaError, match=f"{name}: backend='numba' needs CPU tensors, got cuda"):
            f()


def test_numba_without_a_writable_cache_compiles_and_warns_once(tmp_path):
    """A fresh process where numba finds no cache locator (what a read-only install without a writable
    ~/.cache gives): the kernels still import and run (compiled without a cache), with one RuntimeWarning."""
    script = textwrap.dedent("""
        import warnings
        import numba.core.caching as caching
        caching.CacheImpl._locator_classes = []  # no writable place for numba's cache
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as w:
            import gtn, torch
            from gtn import kernels
            for name in ("scoring_numba", "topology_numba", "compose_numba", "dense_numba", "product_numba",
                         "structure_numba"):
                assert kernels.select(name, backend="numba") is not None, "the kernels were dropped"
            # one small kernel compiled and run without the cache (compiling all would take half a minute)
            k = kernels.select("topology_numba", backend="numba")
            x = gtn.linear_fsa([1, 2], scores=[0.5, 0.25])
            v = gtn.fsa.as_vec(x)
            assert k.reachable(v, torch.tensor([0]), True).tolist() == [True] * 4
        msgs = [str(m.message) for m in w if "cannot write its cache" in str(m.message)]
        assert len(msgs) == 1, msgs
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_CACHE_DIR="")
    env.pop("GTN_NO_NUMBA", None)
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
