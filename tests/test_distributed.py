"""Tests of lenet.distributed: data-parallel training with 2 processes (gloo, CPU) makes the same steps as one
process on the same global batches, for both trainers; torchrun runs the command lines, on one "machine" or
two, and a worker killed mid-training ends in a finished run resumed from the last state."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import lenet
from lenet.distributed import SINGLE, Context, init, launched, teardown
from lenet.global_train import GlobalRecipe, PassBatches, train_globally
from lenet.model import LeNet5
from lenet.recognizer import StringReader
from lenet.strings import make_strings
from lenet.train import train

ROOT = Path(__file__).resolve().parents[1]

# two steps: 6 strings (3 + 3 per rank), then 1 (rank 0's share empty: it must still take part); with the
# isolated-digit term, which every rank draws alike and adds its share of
RECIPE = GlobalRecipe(global_epochs=1, batch_size=6, lr=1e-2, seg_lr=1e-1, fresh=False, workers=0,
                      isolated_weight=0.5, isolated_batch=4)
ISOLATED = dict(epochs=1, limit=40, batch_size=16, seed=1, distort=True, dtype=torch.float64, progress=False,
                log=lambda *a: None)  # 3 steps: 16, 16, 8 digits


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reader():
    torch.manual_seed(0)
    reader = StringReader(LeNet5(), lengths=(3, 6)).double()
    with torch.no_grad():
        reader.transformer.seg_bias.fill_(2.0)
    return reader


def _strings(lazy=False):
    return make_strings(7, "train", seed=5, lazy=lazy)


def _both_trainers(ctx):
    reader = _reader()
    # the ranks draw only their shares of lazy strings; one process draws them all at once, as ever
    digits = lenet.load_digits("train", raw=True)
    hist = train_globally(reader, _strings(lazy=ctx.distributed), RECIPE, seed=0, progress=False, monitor=[],
                          ctx=ctx, digits=(digits[0][:100], digits[1][:100]))
    model, history = train(ctx=ctx, **ISOLATED)
    return reader, hist, model, history


def _worker(rank, world, port, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = init("cpu")
    try:
        reader, hist, model, history = _both_trainers(ctx)
        torch.save({"reader": reader.state_dict(), "hist": hist, "lenet": model.state_dict(),
                    "train_loss": history[-1]["train_loss"], "ctx": (ctx.rank, ctx.world_size, ctx.backend)},
                   Path(folder) / f"rank{rank}.pt")
    finally:
        teardown(ctx)


def test_shards_cover_every_batch_once_in_order():
    strings = make_strings(23, "train", seed=2)
    for world in (2, 3):
        alone = [labels for _, labels in PassBatches(0, strings, None, 8, 4, lambda images: images)]
        shares = [[labels for _, labels in PassBatches(0, strings, None, 8, 4, lambda images: images,
                                                       shard=Context(rank=r, world_size=world).shard)]
                  for r in range(world)]
        for j, batch in enumerate(alone):
            parts = [shares[r][j] for r in range(world)]
            assert sum(parts, []) == batch  # the union, in order; nothing seen twice
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    # fewer items than ranks: some shares are empty
    assert [Context(rank=r, world_size=3).shard([7]) for r in range(3)] == [[], [], [7]]


def test_each_rank_draws_only_its_shares_of_lazy_strings():
    """PassBatches over make_strings(..., lazy=True): each rank draws the strings of its shares and no other
    (no string drawn by two ranks, every string by one), and they are the strings one process trains on."""
    world, n = 3, 29
    alone = [(images, labels) for images, labels in PassBatches(0, make_strings(n, "train", seed=6), None, 8, 4,
                                                                lambda images: images)]
    drawn, shares = [], []
    for r in range(world):
        lazy = make_strings(n, "train", seed=6, lazy=True)
        shares.append(list(PassBatches(0, lazy, None, 8, 4, lambda images: images,
                                       shard=Context(rank=r, world_size=world).shard)))
        drawn.append(lazy.drawn)
        assert len(lazy.drawn) == sum(len(labels) for _, labels in shares[-1])
    assert sorted(i for d in drawn for i in d) == list(range(n))
    for j, (images, labels) in enumerate(alone):
        assert sum((shares[r][j][1] for r in range(world)), []) == labels
        got = [im for r in range(world) if shares[r][j][0] is not None for im in shares[r][j][0]]
        assert len(got) == len(images) and all(torch.equal(a, b) for a, b in zip(got, images))


def test_alone_is_the_single_context(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not launched() and init() is SINGLE and SINGLE.is_main and not SINGLE.distributed
    assert SINGLE.sum([1, 2.5]) == [1.0, 2.5] and SINGLE.shard([1, 2, 3]) == [1, 2, 3]
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init() is SINGLE


def test_two_processes_make_the_steps_of_one(tmp_path):
    """One process and two (gloo) on the same global batches, float64: the same parameters (network,
    segmentation weight and bias), buffers and losses within 1e-6, for train_globally and lenet.train.train."""
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    reader, hist, model, history = _both_trainers(SINGLE)
    start = _reader().state_dict()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["ctx"] for r in ranks] == [(0, 2, "gloo"), (1, 2, "gloo")]
    one = reader.state_dict()
    assert {"transformer.seg_weight", "transformer.seg_bias"} <= one.keys()
    assert (one["transformer.seg_weight"] - start["transformer.seg_weight"]).abs().max() > 1e-3  # it moved
    assert abs(float(one["transformer.seg_bias"]) - 2.0) > 1e-3
    for got in ranks:
        assert got["reader"].keys() == one.keys() and got["lenet"].keys() == model.state_dict().keys()
        for k, v in one.items():
            assert v.dtype == torch.float64 or not v.is_floating_point()
            assert torch.allclose(got["reader"][k], v, rtol=0, atol=1e-6), k
        for k, v in model.state_dict().items():
            assert torch.allclose(got["lenet"][k], v, rtol=0, atol=1e-6), k
        assert got["hist"]["step_loss"] == pytest.approx(hist["step_loss"], abs=1e-6)
        assert got["hist"]["isolated_loss"] == pytest.approx(hist["isolated_loss"], abs=1e-6)
        assert got["hist"]["unreachable"] == hist["unreachable"]
        assert got["train_loss"] == pytest.approx(history[-1]["train_loss"], abs=1e-6)
    assert len(hist["step_loss"]) == 2 - (hist["unreachable"] == 1)


def _torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", *args]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "LENET_PROGRESS_INTERVAL": "3600"}


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


TRAIN_ARGS = ["-m", "lenet.train", "--limit", "640", "--epochs", "8", "--batch-size", "32", "--no-distort",
              "--no-plots", "--no-progress", "--resume", "auto"]


def test_a_killed_worker_ends_in_a_finished_run_resumed_from_the_last_state(tmp_path):
    """torchrun --max-restarts=1 with 2 workers of lenet.train; one is killed once the state of pass 1 exists:
    torchrun restarts both, they resume from the latest state and finish."""
    out = tmp_path / "lenet5.pt"
    proc = subprocess.Popen(_torchrun("--standalone", "--nproc_per_node=2", "--max-restarts=1",
                                      *TRAIN_ARGS, "--out", str(out)),
                            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = None
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None and killed is None:
            if list(tmp_path.glob("lenet5_isolated_pass*.state.pt")):
                workers = _children(proc.pid)
                if len(workers) == 2:
                    killed = workers[-1]
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.02)
        log, _ = proc.communicate(timeout=max(deadline - time.time(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, f"no worker to kill (the run ended first?)\n{log}"
    assert proc.returncode == 0, log
    assert "resumed from" in log and "_isolated_pass" in log, log
    resumed_after = int(log.split("(after pass ")[1].split("/")[0])
    assert 1 <= resumed_after < 8
    ckpt = lenet.checkpoint.read(out)
    assert [h["epoch"] for h in ckpt["history"]] == list(range(1, 9))
    assert ckpt["test_error"] < 0.6
    assert [p.name for p in tmp_path.glob("*.state.pt")] == ["lenet5_isolated_pass0008.state.pt"]


@pytest.mark.slow
def test_two_nodes_on_the_loopback_address_train_like_one_process(tmp_path):
    """Two torchrun "nodes" (one worker each) meeting at a c10d rendezvous on 127.0.0.1 train lenet.train to
    the same weights as one process (float64)."""
    port = _free_port()
    args = ["-m", "lenet.train", "--limit", "256", "--epochs", "2", "--batch-size", "32", "--double",
            "--no-plots", "--no-progress", "--seed", "3"]
    nodes = [subprocess.Popen(_torchrun("--nnodes=2", "--nproc_per_node=1", f"--node-rank={r}",
                                        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=i16",
                                        *args, "--out", str(tmp_path / "two.pt")),
                              cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    logs = [n.communicate(timeout=300)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], logs
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one.pt")], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    a, b = lenet.checkpoint.read(tmp_path / "two.pt"), lenet.checkpoint.read(tmp_path / "one.pt")
    for k, v in b["state_dict"].items():
        assert torch.allclose(a["state_dict"][k], v, rtol=0, atol=1e-6), k


@pytest.mark.slow
def test_the_example_under_torchrun_writes_a_reader_that_reads_strings(tmp_path):
    """The issue's 'done when': torchrun --standalone --nproc_per_node=2 examples/multi_digit.py --quick; rank 0
    alone prints the report and writes the files; lenet.recognize reads strings with its checkpoint."""
    out = tmp_path / "reader.pt"
    run = subprocess.run(_torchrun("--standalone", "--nproc_per_node=2", str(ROOT / "examples" / "multi_digit.py"),
                                   "--quick", "--no-progress", "--out", str(out)),
                         cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("global training lowered the loss") == 1  # one report: rank 0's
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["reader.pt", "reader_curves.png", "reader_example.png", "reader_reject.png", "reader_metrics.json",
         "reader_global_pass0001.state.pt", "reader_isolated_pass0001.state.pt"])
    strings = make_strings(4, "test", seed=9)
    texts = lenet.recognize([s.image for s in strings], out)
    assert len(texts) == 4 and all(t.isdigit() and 3 <= len(t) <= 6 for t in texts)
