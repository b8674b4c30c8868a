"""A learned transducer composed with emissions, in facebookresearch/gtn's Python API (``import gtn.compat as
gtn``): the pattern of "Differentiable Weighted Finite-State Transducers" (Hannun et al., 2020), where a token
graph with trainable weights sits between frame-level emissions and the targets.

Emissions E (T frames x C tokens) come from a linear layer; the transducer L maps tokens to outputs (one state,
start and accepting, an arc c:o for every token c and output o, weights learned; plus c:epsilon arcs, so a frame
may emit nothing). With Y the target output string as an acceptor,
    loss = forward(E o L) - forward((E o L) o Y).
Gradients reach both the emissions (through `gtn.backward` and `grad()`, into torch) and the transducer weights.

    python examples/compat_transducer.py      # trains 40 steps on synthetic data, prints the loss
"""
import random
import sys

import torch

import gtn.compat as gtn


def token_transducer(C, O, calc_grad=True):
    g = gtn.Graph(calc_grad)
    g.add_node(True, True)
    for c in range(C):
        for o in range(O):
            g.add_arc(0, 0, c, o)
        g.add_arc(0, 0, c, gtn.epsilon)
    return g


def target_acceptor(y):
    g = gtn.Graph(False)
    g.add_node(True, len(y) == 0)
    for k, o in enumerate(y):
        g.add_node(False, k == len(y) - 1)
        g.add_arc(k, k + 1, o)
    return g


def loss_one(em, lex, y):
    el = gtn.compose(em, lex)
    return gtn.subtract(gtn.forward_score(el), gtn.forward_score(gtn.compose(el, target_acceptor(y))))


def synthetic_batch(B, T, C, O, F, rng, proj, mapping):
    """Frames carry a hidden token; the output string is the mapped tokens of the frames that emit (token
    C-1 is silent)."""
    x = torch.zeros(B, T, F)
    ys = []
    for b in range(B):
        toks = [rng.randrange(C) for _ in range(T)]
        x[b] = proj[torch.tensor(toks)] + 0.3 * torch.randn(T, F)
        ys.append([mapping[t] for t in toks if t != C - 1])
    return x, ys


def train(steps=40, seed=0, B=8, T=5, C=4, O=3, F=8, lr=0.05, lex_lr=1.0):
    """Train the emission layer and the transducer weights; returns the losses."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    proj = torch.randn(C, F)
    mapping = list(range(O))  # tokens 0..O-1 map to outputs 0..O-1; token C-1 is silent
    model = torch.nn.Linear(F, C)
    lex = token_transducer(C, O)
    lex_w = torch.zeros(lex.num_arcs())
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        x, ys = synthetic_batch(B, T, C, O, F, rng, proj, mapping)
        logits = model(x).log_softmax(-1)
        lex.set_weights(lex_w.tolist())
        lex.zero_grad()
        em_graphs, outs = [None] * B, [None] * B

        def process(b):
            em = gtn.linear_graph(T, C)
            em.set_weights(logits[b].detach().flatten().tolist())
            em_graphs[b], outs[b] = em, loss_one(em, lex, ys[b])
            gtn.backward(outs[b])

        gtn.parallel_for(process, range(B))
        em_grad = torch.stack([torch.tensor(g.grad().weights_to_list()).view(T, C) for g in em_graphs])
        opt.zero_grad()
        logits.backward(em_grad / B)
        opt.step()
        lex_w -= lex_lr * torch.tensor(lex.grad().weights_to_list()) / B
        losses.append(sum(o.item() for o in outs) / B)
    return losses


if __name__ == "__main__":
    torch.set_num_threads(1)
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    losses = train(steps)
    for i in range(0, steps, max(1, steps // 8)):
        print(f"step {i:3d}  loss {losses[i]:.4f}")
    print(f"step {steps - 1:3d}  loss {losses[-1]:.4f}")
