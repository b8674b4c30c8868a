"""An ASG-style criterion with a learned transition graph, written for facebookresearch/gtn and run here by
changing its import to ``import gtn.compat as gtn`` (nothing else changed: the classic GTN-on-PyTorch pattern of
a ``torch.autograd.Function`` that builds graphs per example with ``parallel_for`` and reads ``grad()`` back).

The criterion (Collobert et al.'s ASG, as in facebookresearch/gtn's own tests): for emissions E (T x N), a
transition graph W (bigram scores, learned) and a target y,
    loss = forward(E o W) - forward((F_y o W) o E),   F_y: y's tokens, each repeated one or more frames.

    python examples/compat_asg.py        # trains 40 steps on synthetic data, prints the loss
"""
import random
import sys

import torch

import gtn.compat as gtn


def transitions_graph(N, calc_grad=True):
    """Node 0: start; node i+1: "last token was i" (accepting). Arcs 0 -> i+1 (label i) then j+1 -> i+1."""
    g = gtn.Graph(calc_grad)
    g.add_node(True)
    for i in range(1, N + 1):
        g.add_node(False, True)
        g.add_arc(0, i, i - 1)
    for i in range(N):
        for j in range(N):
            g.add_arc(j + 1, i + 1, i)
    return g


def force_align_graph(target):
    g = gtn.Graph(False)
    g.add_node(True)
    for k in range(1, len(target) + 1):
        g.add_node(False, k == len(target))
        g.add_arc(k - 1, k, target[k - 1])
        g.add_arc(k, k, target[k - 1])
    return g


class ASGLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, emissions, trans_weights, transitions, targets):
        B, T, N = emissions.shape
        losses, em_graphs, tr_graphs = [None] * B, [None] * B, [None] * B
        cpu = emissions.detach().cpu().contiguous()

        def process(b):
            em = gtn.linear_graph(T, N, True)
            em.set_weights(cpu[b].flatten().tolist())
            tr = gtn.clone(transitions)  # each example's copy: its gradient is read separately
            num = gtn.forward_score(gtn.compose(gtn.compose(force_align_graph(targets[b]), tr), em))
            den = gtn.forward_score(gtn.compose(em, tr))
            losses[b], em_graphs[b], tr_graphs[b] = gtn.subtract(den, num), em, tr

        gtn.parallel_for(process, range(B))
        ctx.saved = (losses, em_graphs, tr_graphs, (B, T, N))
        return torch.tensor([l.item() for l in losses]).mean()

    @staticmethod
    def backward(ctx, grad_output):
        losses, em_graphs, tr_graphs, (B, T, N) = ctx.saved
        em_grad = torch.zeros(B, T, N)
        tr_grad = torch.zeros(len(tr_graphs[0].weights_to_list()))

        def process(b):
            gtn.backward(losses[b])
            em_grad[b] = torch.tensor(em_graphs[b].grad().weights_to_list()).view(T, N)

        gtn.parallel_for(process, range(B))
        for tr in tr_graphs:
            tr_grad += torch.tensor(tr.grad().weights_to_list())
        return em_grad * grad_output / B, tr_grad * grad_output / B, None, None


def synthetic_batch(B, N, F, rng, proj):
    """Targets of 2-3 tokens, each held 1-3 frames; frames are noisy projections of their token."""
    targets, frames = [], []
    for _ in range(B):
        y = [rng.randrange(N) for _ in range(rng.randint(2, 3))]
        while any(a == b for a, b in zip(y, y[1:])):  # ASG cannot separate repeated tokens without a repeat label
            y = [rng.randrange(N) for _ in range(len(y))]
        seq = [t for t in y for _ in range(rng.randint(1, 3))]
        targets.append(y)
        frames.append(seq)
    T = max(len(s) for s in frames)
    x = torch.zeros(B, T, F)
    for b, s in enumerate(frames):
        s = s + [s[-1]] * (T - len(s))  # pad by holding the last token
        x[b] = proj[torch.tensor(s)] + 0.3 * torch.randn(T, F)
    return x, targets


def train(steps=40, seed=0, B=8, N=4, F=8, lr=0.1):
    """Train emissions (a linear layer) and the transition weights together; returns the losses."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    proj = torch.randn(N, F)
    model = torch.nn.Linear(F, N)
    transitions = transitions_graph(N, calc_grad=True)
    trans_w = torch.nn.Parameter(torch.zeros(transitions.num_arcs()))
    opt = torch.optim.SGD(list(model.parameters()) + [trans_w], lr=lr)
    losses = []
    for _ in range(steps):
        x, targets = synthetic_batch(B, N, F, rng, proj)
        transitions.set_weights(trans_w.detach().tolist())
        loss = ASGLoss.apply(model(x), trans_w, transitions, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


if __name__ == "__main__":
    torch.set_num_threads(1)
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    losses = train(steps)
    for i in range(0, steps, max(1, steps // 8)):
        print(f"step {i:3d}  loss {losses[i]:.4f}")
    print(f"step {steps - 1:3d}  loss {losses[-1]:.4f}")
