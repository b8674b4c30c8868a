"""Which test digits do all of several trained LeNet-5s misread, and does a committee of them do better?

    python examples/hard_digits.py runs/lenet5.pt runs/lenet5_seed1.pt runs/lenet5_seed2.pt --out runs/hard.png

Reads the 1,000 bundled test digits with each checkpoint (written by ``python -m lenet.train``), prints each
network's test error, the error of their committee (the class with the highest mean of ``softmax(-penalties)``),
how many digits every network misreads, and draws those digits with their label and each network's reading.
A digit that networks trained from different seeds all misread is one that more seeds (a committee) will not
fix: it bounds what averaging can buy on this test set. ``--json`` writes the figures as well.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import lenet  # noqa: E402


@torch.no_grad()
def analyse(checkpoints, images=None, labels=None) -> dict:
    """Each network's error, the committee's, and the indices of the digits every network misreads."""
    if len(checkpoints) < 1:
        raise ValueError("give at least one checkpoint")
    if images is None:
        images, labels = lenet.load_digits("test")
    probs, errors = [], []
    for c in checkpoints:
        model = lenet.load(c) if isinstance(c, (str, Path)) else c
        model.eval()
        p = torch.softmax(-model(images).double(), -1)  # penalties: lower is better
        probs.append(p)
        errors.append(float((p.argmax(-1) != labels).double().mean()))
    preds = torch.stack([p.argmax(-1) for p in probs])             # [networks, N]
    committee = torch.stack(probs).mean(0).argmax(-1)
    all_wrong = torch.nonzero((preds != labels).all(0)).squeeze(1)
    any_wrong = torch.nonzero((preds != labels).any(0)).squeeze(1)
    return {"errors": errors, "committee_error": float((committee != labels).double().mean()),
            "all_wrong": all_wrong.tolist(), "any_wrong": any_wrong.tolist(),
            "labels": labels[all_wrong].tolist(), "readings": preds[:, all_wrong].T.tolist()}


def draw(path, result, raw_images, columns: int = 12):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    idx = result["all_wrong"]
    n = max(len(idx), 1)
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i, y, r in zip(axes.flat, idx, result["labels"], result["readings"]):
        ax.imshow(raw_images[i].squeeze().numpy(), cmap="gray")
        ax.set_title(f"#{i}: {y}→{','.join(map(str, r))}", fontsize=8)
    if not idx:
        axes.flat[0].set_title("no digit misread by every network", fontsize=8)
    fig.suptitle(f"test digits every one of {len(result['errors'])} networks misreads (label→readings)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="checkpoints written by python -m lenet.train")
    ap.add_argument("--out", default="hard_digits.png", help="the picture of the digits every network misreads")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    result = analyse(args.checkpoints)
    for c, e in zip(args.checkpoints, result["errors"]):
        print(f"{c}: test error {100 * e:.2f} %")
    print(f"committee of {len(args.checkpoints)} (mean softmax of -penalties): test error "
          f"{100 * result['committee_error']:.2f} %")
    print(f"misread by every network: {len(result['all_wrong'])} digits; by at least one: {len(result['any_wrong'])}")
    for i, y, r in zip(result["all_wrong"], result["labels"], result["readings"]):
        print(f"  test digit {i}: label {y}, read as {', '.join(map(str, r))}")
    draw(args.out, result, lenet.load_digits("test", raw=True)[0])
    print(f"wrote {args.out}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
