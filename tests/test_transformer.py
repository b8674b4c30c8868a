"""gtn.Transformer: graphs owned by a module (buffers + Parameters), gradients into them, chaining, state_dict."""
import pytest
import torch

import gtn


class Suffix(gtn.Transformer):
    """Appends a learned graph to every input graph."""

    def __init__(self, suffix: gtn.Fsa):
        super().__init__()
        self.register_graph("suffix", suffix, trainable=True)

    def forward(self, x):
        return gtn.concat(x, self.suffix)


class Emissions(gtn.Transformer):
    """Tensor -> graph: a linear network scores each symbol of each frame; the output is the frame lattice."""

    def __init__(self, features: int, symbols: int):
        super().__init__()
        self.net = torch.nn.Linear(features, symbols)
        self.symbols = symbols

    def forward(self, x):  # x: [T, features] -> an Fsa with T+2 states
        T, C = x.shape[0], self.symbols
        logp = torch.log_softmax(self.net(x), -1)
        src = torch.arange(T).repeat_interleave(C)
        arcs = torch.stack([src, src + 1, torch.arange(C).repeat(T) + 1], 1)
        arcs = torch.cat([arcs, torch.tensor([[T, T + 1, -1]])])
        return gtn.Fsa(arcs, torch.cat([logp.reshape(-1), logp.new_zeros(1)]))


def suffix_graph():
    return gtn.Fsa([(0, 1, 5, 0.5), (0, 1, 6, -0.5), (1, 2, -1, 0.0)], seg=torch.tensor([1.0, 2.0, 3.0]))


def test_registered_graph_is_a_parameter_and_gets_gradients():
    m = Suffix(suffix_graph())
    assert [n for n, _ in m.named_parameters()] == ["suffix__scores", "suffix__attr__seg"]
    assert isinstance(m.suffix, gtn.Fsa) and m.suffix.equal(suffix_graph())
    x = gtn.Fsa([(0, 1, 1, 0.0), (0, 1, 2, 1.0), (1, 2, -1, 0.0)])
    loss = -gtn.forward_score(m(x))
    loss.backward()
    # d forward(concat(x, s)) / d s.scores are the arc posteriors of s
    want = gtn.arc_posteriors(suffix_graph())
    torch.testing.assert_close(-m.suffix__scores.grad, want)


def test_tensor_to_graph_and_chaining_train():
    torch.manual_seed(0)
    em = Emissions(4, 3)
    reader = torch.nn.Sequential(em, Suffix(suffix_graph()))
    x = torch.randn(5, 4)
    target = gtn.linear_fsa([1, 2, 3, 1, 2, 5])
    opt = torch.optim.SGD(reader.parameters(), lr=0.5)
    losses = []
    for _ in range(20):
        g = reader(x)
        loss = gtn.forward_score(g) - gtn.forward_score(gtn.intersect(g, target))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert em.net.weight.grad is not None and losses[-1] < 0.5 * losses[0]


def test_dtype_state_dict_and_repr():
    m = Suffix(suffix_graph()).double()
    assert m.suffix.dtype == torch.float64 and m.suffix.arcs.dtype == torch.int64
    m2 = Suffix(gtn.Fsa([(0, 1, 5, 9.0), (0, 1, 6, 9.0), (1, 2, -1, 9.0)], seg=torch.zeros(3))).double()
    m2.load_state_dict(m.state_dict())
    assert m2.suffix == m.suffix
    assert "suffix=Fsa(acceptor" in repr(m)
    assert list(m.graphs()) == ["suffix"]


def test_frozen_graph_and_errors():
    class Frozen(gtn.Transformer):
        def __init__(self):
            super().__init__()
            self.register_graph("g", gtn.FsaVec([suffix_graph(), suffix_graph()]).to(torch.float64))

        def forward(self, x):
            return gtn.union(x, self.g)

    f = Frozen()
    assert list(f.parameters()) == [] and isinstance(f.g, gtn.FsaVec) and len(f.g) == 2
    with pytest.raises(gtn.FsaError, match="already an attribute"):
        f.register_graph("g", suffix_graph())
    with pytest.raises(gtn.FsaError, match="identifier"):
        f.register_graph("a__b", suffix_graph())
    with pytest.raises(gtn.FsaError, match="no graph"):
        f.graph("h")

    class Forgot(gtn.Transformer):
        def __init__(self):
            torch.nn.Module.__init__(self)
            self.register_graph("g", suffix_graph())

    with pytest.raises(gtn.FsaError, match="super"):
        Forgot()
