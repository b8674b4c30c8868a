"""The report of a reader's training run (``examples/multi_digit.py``): the metrics table, the error budget
and rejection lines, and the figures (training curves, a decoded example, the error-reject curve)."""
from __future__ import annotations

import torch

from .metrics import error_reject

__all__ = ["machine", "table", "budget_lines", "reject_lines", "plot_curves", "plot_example", "plot_reject"]


def machine() -> dict:
    """What a run's figures depend on besides the seed: torch's version and threads, and the CPU kernels
    (float results differ in their last bits between CPU instruction sets, and training amplifies that)."""
    import platform
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def table(rows):
    """A Markdown table of `lenet.global_train.evaluate`'s metrics, one row per (system, training) run."""
    head = ["system", "training", "string accuracy", "digit error", "strings", "eval s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {r['system']} | {r['training']} | {100 * r['string_accuracy']:.1f} % | "
                     f"{100 * r['digit_error']:.2f} % | {r['strings']} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def budget_lines(rows):
    """Where the wrong test strings come from (`lenet.metrics.error_budget`), one line per regime."""
    lines = []
    for r in rows:
        b = r["budget"]
        lines.append(f"{r['training']}: the network misreads {100 * b['isolated_error']:.1f} % of the test digits on "
                     f"their own; {100 * (1 - b['ceiling']):.1f} % of the test strings contain one (a perfect "
                     f"segmenter reading each digit as alone would read {100 * b['ceiling']:.1f} %); of the {b['wrong']} wrong strings "
                     f"{b['wrong_with_misread_digit']} contain one, {b['wrong_without']} do not (segmentation or "
                     f"context)")
    return "\n".join(lines)


def reject_lines(rows):
    """The paper's operating points: how many strings are accepted (and read right) at a given error."""
    lines = ["rejecting the least confident strings (confidence exp(-E), the posterior of the reading):"]
    for r in rows:
        pts = "; ".join(f"at {100 * p['error']:g} % error {100 * p['accepted']:.1f} % accepted"
                        for p in r["reject"])
        lines.append(f"  {r['training']}: {pts}")
    return "\n".join(lines)


def plot_curves(path, hist, iso_history, title):
    """(a) the isolated-digit test error per pass (``iso_history`` of `lenet.train.train`, may be empty) and
    (b) global training's loss per batch and on the monitor strings (`train_globally`'s history)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    if iso_history:
        ax = axes[0]
        ax.plot([h["epoch"] for h in iso_history], [100 * h["test_error"] for h in iso_history], "o-")
        ax.set_xlabel("pass over the isolated digits")
        ax.set_ylabel("isolated-digit test error (%)")
        ax.set_title("(a) isolated training of LeNet-5")
        ax.grid(alpha=0.3)
    else:
        axes[0].set_axis_off()
    ax = axes[1]
    sl = torch.tensor(hist["step_loss"])
    ax.plot(sl.numpy(), alpha=0.3, label="per batch")
    k = max(1, len(sl) // 30)
    if len(sl) >= k:
        sm = torch.nn.functional.avg_pool1d(sl[None, None], k, stride=1)[0, 0]
        ax.plot(range(k - 1, len(sl)), sm.numpy(), label=f"running mean ({k} batches)")
    steps_per_epoch = len(sl) / max(1, len(hist["monitor_loss"]) - 1)
    ax.plot([i * steps_per_epoch for i in range(len(hist["monitor_loss"]))], hist["monitor_loss"], "ko-",
            label="monitor strings")
    ax.set_xlabel("global training step")
    ax.set_ylabel("discriminative forward loss")
    ax.set_yscale("log")
    ax.set_title("(b) global training through the graph")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_example(path, reader_before, reader_after, s, name_a="(a) isolated"):
    """One string ``s`` read by two readers (before and after global training), each with its decoding."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 1, figsize=(max(4.0, s.image.shape[1] / 14), 4.4))
    for ax, (name, r) in zip(axes, [(name_a, reader_before), ("(b) global", reader_after)]):
        r.plot_decoding(s.image, ax=ax, title=f"{name}: read", truth=s.label)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_reject(path, runs, strings, title):
    """Error among the accepted strings against the share rejected, one line per (name, texts, confidences)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for name, preds, conf in runs:
        c = error_reject(conf, [p == s.label for p, s in zip(preds, strings)])["curve"]
        ax.plot([100 * x for x in c["rejected"]], [100 * e for e in c["error"]], label=name)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("strings rejected (%)")
    ax.set_ylabel("error among the accepted (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, None)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
