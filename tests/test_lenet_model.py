"""LeNet-5 against the paper's specification (§II-B), the variants, the MAP loss and SDLM."""
import math

import pytest
import torch

import lenet
from lenet.model import (A, C3_TABLE, DIGIT_BITMAPS, S, EuclideanRBF, LeNet5, LeNet5FullC3, LeNet5Modern,
                         SparseConv2d, build, digit_prototypes, map_loss, squash)
from lenet.optim import SDLM, gauss_newton_diagonal, paper_learning_rate

torch.set_num_threads(1)

# The paper's Table I, written out as in the paper: rows are S2 maps, columns C3 maps, X = connected.
PAPER_TABLE_I = """
X . . . X X X . . X X X X . X X
X X . . . X X X . . X X X X . X
X X X . . . X X X . . X . X X X
. X X X . . X X X X . . X . X X
. . X X X . . X X X X . X X . X
. . . X X X . . X X X X . X X X
"""

PAPER_COUNTS = {"c1": 156, "s2": 12, "c3": 1516, "s4": 32, "c5": 48120, "f6": 10164, "rbf": 0}


def trainable(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_parameter_counts_per_layer_and_total():
    model = LeNet5()
    assert {name: trainable(child) for name, child in model.named_children()} == PAPER_COUNTS
    assert trainable(model) == 60000
    assert sum(p.numel() for p in model.parameters()) == 60000  # nothing hidden as a frozen parameter


def test_variant_counts():
    full = LeNet5FullC3()
    assert trainable(full.c3) == 16 * (6 * 25 + 1) == 2416
    assert trainable(full) == 60900
    assert LeNet5(connections="full").config() == full.config()
    modern = LeNet5Modern()
    assert trainable(modern) == 156 + 2416 + 48120 + 10164 + 850
    with pytest.raises(ValueError, match="connections"):
        LeNet5(connections="half")
    with pytest.raises(ValueError, match="unknown variant"):
        build("lenet7")


def test_c3_table_is_the_papers():
    rows = [line.split() for line in PAPER_TABLE_I.strip().splitlines()]
    expected = tuple(tuple(s2 for s2 in range(6) if rows[s2][c3] == "X") for c3 in range(16))
    assert tuple(tuple(sorted(r)) for r in C3_TABLE) == expected
    c3 = LeNet5().c3
    assert isinstance(c3, SparseConv2d)
    assert c3.mask.T.tolist() == [[x == "X" for x in row] for row in rows]
    assert c3.weight.shape == (60, 5, 5)


def test_sparse_conv_equals_masked_dense_conv():
    torch.manual_seed(0)
    c3 = LeNet5().c3.double()
    x = torch.randn(2, 6, 14, 14, dtype=torch.double)
    dense = torch.zeros(16, 6, 5, 5, dtype=torch.double)
    k = 0
    for o, row in enumerate(C3_TABLE):
        for i in row:
            dense[o, i] = c3.weight[k]
            k += 1
    expected = torch.nn.functional.conv2d(x, dense, c3.bias)
    torch.testing.assert_close(c3(x), expected)
    # Unconnected maps have no influence and the gradient reaches exactly the stored kernels.
    x.requires_grad_(True)
    c3(x)[:, 0].sum().backward()  # C3 map 0 reads S2 maps 0, 1, 2 only
    assert x.grad[:, 3:].abs().sum() == 0 and x.grad[:, :3].abs().sum() > 0


def test_prototypes_are_fixed_plus_minus_one_bitmaps():
    model = LeNet5()
    protos = model.rbf.prototypes
    assert protos.shape == (10, 84)
    assert set(protos.unique().tolist()) == {-1.0, 1.0}
    assert "rbf.prototypes" in model.state_dict()
    assert all(p is not protos for p in model.parameters()) and not protos.requires_grad
    assert torch.equal(protos, digit_prototypes())
    for digit, bitmap in enumerate(DIGIT_BITMAPS):
        assert len(bitmap) == 12 and all(len(row) == 7 for row in bitmap)
        assert protos[digit].view(12, 7).eq(1).tolist() == [[c == "#" for c in row] for row in bitmap]
    # Distinct codes, none too close to another: the RBF can tell every pair apart.
    hamming = (protos[:, None] != protos[None]).sum(-1) + 100 * torch.eye(10, dtype=torch.long)
    assert hamming.min() >= 12
    # A training step leaves them alone.
    x = torch.randn(4, 1, 32, 32)
    model.loss(model(x), torch.arange(4)).backward()
    opt = SDLM(model.parameters(), lr=0.1)
    opt.set_curvature({p: torch.zeros_like(p) for p in model.parameters()})
    opt.step()
    assert torch.equal(model.rbf.prototypes, digit_prototypes())


def test_squash_constants():
    assert A == 1.7159 and S == pytest.approx(2 / 3)
    a = torch.tensor([-1.0, 0.0, 1.0, 100.0])
    torch.testing.assert_close(squash(a), 1.7159 * torch.tanh(2 * a / 3))
    assert squash(torch.tensor(1.0)).item() == pytest.approx(1.0, abs=2e-4)  # f(1) ~ 1, as the paper chose


def test_initialisation_is_uniform_in_2_4_over_fan_in():
    torch.manual_seed(0)
    model = LeNet5()
    bounds = {"c1": 2.4 / 25, "s2": 2.4 / 4, "s4": 2.4 / 4, "c5": 2.4 / 400, "f6": 2.4 / 120}
    for name, bound in bounds.items():
        for p in getattr(model, name).parameters():
            assert p.abs().max() <= bound
            assert p.abs().max() > 0.8 * bound or p.numel() < 20  # spread over the range, not a constant
    for k, (o, _) in enumerate((o, i) for o, row in enumerate(C3_TABLE) for i in row):
        assert model.c3.weight[k].abs().max() <= 2.4 / (25 * len(C3_TABLE[o]))
    assert (model.c3.bias.abs() <= 2.4 / (25 * torch.tensor([len(r) for r in C3_TABLE]))).all()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    m1, m2 = LeNet5(), LeNet5()
    m1.reset_parameters(g1)
    m2.reset_parameters(g2)
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))


@pytest.mark.parametrize("cls", [LeNet5, LeNet5FullC3, LeNet5Modern])
def test_output_shape_and_lower_penalty_is_the_prediction(cls):
    torch.manual_seed(0)
    model = cls()
    x = torch.randn(5, 1, 32, 32)
    penalties = model(x)
    assert penalties.shape == (5, 10)
    assert (penalties >= 0).all()  # squared distances / negative log-probabilities
    assert torch.equal(model.predict(x), penalties.argmin(1))
    assert torch.equal(lenet.classify(x, model), penalties.argmin(1))
    with pytest.raises(ValueError, match=r"\[batch, 1, 32, 32\]"):
        model(torch.randn(5, 1, 28, 28))


def test_rbf_is_squared_euclidean_distance():
    protos = digit_prototypes()
    rbf = EuclideanRBF(protos)
    x = torch.randn(3, 84)
    expected = torch.stack([torch.stack([((x[b] - protos[i]) ** 2).sum() for i in range(10)]) for b in range(3)])
    torch.testing.assert_close(rbf(x), expected)
    # A state equal to digit d's code has penalty 0 for d: the prediction is d.
    assert torch.equal(rbf(protos).argmin(1), torch.arange(10))
    assert torch.equal(rbf(protos).diagonal(), torch.zeros(10))


def test_rbf_matrix_product_form_equals_the_difference_form_with_gradients():
    # EuclideanRBF computes |x|^2 - 2 x.w + |w|^2 (one matrix product); values and gradients must be those of
    # sum_j (x_j - w_ij)^2, for [rows, 84] and for sweep's [batch, positions, 84], float32 and float64.
    torch.manual_seed(0)
    for dtype, tol in ((torch.float64, dict(rtol=1e-12, atol=1e-12)), (torch.float32, dict(rtol=1e-5, atol=1e-4))):
        protos = digit_prototypes(dtype)
        rbf = EuclideanRBF(protos)
        for shape in ((7, 84), (2, 5, 84)):
            x = (torch.randn(shape, dtype=dtype) * 1.5).requires_grad_()
            weights = torch.rand(shape[:-1] + (10,), dtype=dtype)
            fast = rbf(x)
            (g_fast,) = torch.autograd.grad((fast * weights).sum(), x)
            direct = (x.unsqueeze(-2) - protos).pow(2).sum(-1)
            (g_direct,) = torch.autograd.grad((direct * weights).sum(), x)
            assert fast.shape == shape[:-1] + (10,)
            torch.testing.assert_close(fast, direct, **tol)
            torch.testing.assert_close(g_fast, g_direct, **tol)
    # Near a code (the trained regime) the penalty stays >= 0 and close to the exact small value.
    near = protos + 1e-3 * torch.randn(10, 84, dtype=protos.dtype)
    assert (rbf(near) >= 0).all()
    torch.testing.assert_close(rbf(near).diagonal(), (near - protos).pow(2).sum(-1), rtol=0, atol=1e-4)


@pytest.mark.parametrize("variant", ["paper", "fullc3", "modern"])
def test_sweep_equals_forward_on_every_window(variant):
    torch.manual_seed(1)
    model = build(variant).double()
    x = torch.randn(2, 1, 32, 75, dtype=torch.double)  # 75 - 32 = 43: the last 3 columns fit no window
    swept = model.sweep(x)
    positions = (75 - 32) // model.stride + 1
    assert swept.shape == (2, positions, 10)
    windows = torch.stack([model(x[..., 4 * p:4 * p + 32]) for p in range(positions)], 1)
    torch.testing.assert_close(swept, windows)
    torch.testing.assert_close(model.sweep(x[..., :32])[:, 0], model(x[..., :32]))
    with pytest.raises(ValueError):
        model.sweep(torch.randn(1, 1, 32, 20, dtype=torch.double))


def test_float64_and_finite_differences():
    torch.manual_seed(0)
    model = LeNet5().double()
    x = torch.randn(2, 1, 32, 32, dtype=torch.double)
    assert model(x).dtype == torch.double
    # Gradient of the MAP loss w.r.t. the sparse C3 kernels and the subsampling coefficients, against
    # central differences.
    targets = torch.tensor([3, 7])
    loss = model.loss(model(x), targets)
    grads = torch.autograd.grad(loss, [model.c3.weight, model.s2.weight])
    eps = 1e-6
    for param, grad in zip([model.c3.weight, model.s2.weight], grads):
        flat = param.data.view(-1)
        for k in [0, flat.numel() // 2, flat.numel() - 1]:
            old = flat[k].item()
            flat[k] = old + eps
            up = model.loss(model(x), targets).item()
            flat[k] = old - eps
            down = model.loss(model(x), targets).item()
            flat[k] = old
            assert grad.view(-1)[k].item() == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-9)


def test_map_loss_matches_formula():
    torch.manual_seed(0)
    y = torch.rand(6, 10, dtype=torch.double) * 20
    t = torch.randint(0, 10, (6,))
    j = 3.0
    expected = torch.stack([y[p, t[p]] + torch.log(math.exp(-j) + torch.exp(-y[p]).sum()) for p in range(6)])
    torch.testing.assert_close(map_loss(y, t, j, reduction="none"), expected)
    torch.testing.assert_close(map_loss(y, t, j), expected.mean())
    assert (expected > 0).all()
    # Huge penalties (the untrained network) do not overflow.
    assert torch.isfinite(map_loss(y * 1000, t, j)).all()
    with pytest.raises(ValueError, match="reduction"):
        map_loss(y, t, j, reduction="max")


@pytest.mark.parametrize("variant", ["paper", "modern"])
def test_loss_hessian_sample_has_the_loss_hessian_as_second_moment(variant):
    torch.manual_seed(0)
    model = build(variant).double()
    dim = 84 if variant != "modern" else 10
    x = torch.randn(dim, dtype=torch.double) * (0.8 if variant != "modern" else 3)
    target = torch.tensor(4)

    def loss_of(features):
        return model.loss(model.head(features[None]), target[None])

    hessian = torch.autograd.functional.hessian(loss_of, x)
    assert torch.linalg.eigvalsh(hessian).min() > -1e-10  # positive semi-definite
    g = torch.Generator().manual_seed(0)
    u = model.loss_hessian_sample(x.expand(20000, dim), target.expand(20000), g)
    second_moment = u.T @ u / len(u)
    assert (second_moment - hessian).abs().max() < 0.05 * hessian.abs().max()


def test_gauss_newton_diagonal_is_unbiased():
    # Compare the Monte-Carlo estimate (averaged over many draws) with diag(J^T H J) computed exactly.
    torch.manual_seed(0)
    model = LeNet5().double()
    x = torch.randn(2, 1, 32, 32, dtype=torch.double)
    t = torch.tensor([1, 5])
    params = [model.c3.bias, model.s4.weight, model.f6.bias]
    exact = [torch.zeros_like(p) for p in params]
    for b in range(2):
        feats = model.features(x[b:b + 1])[0]
        jac = [torch.stack([torch.autograd.grad(feats[k], p, retain_graph=True)[0] for k in range(84)])
               for p in params]
        hessian = torch.autograd.functional.hessian(
            lambda f: model.loss(model.head(f[None]), t[b:b + 1]), feats.detach())
        for e, jk in zip(exact, jac):
            flat = jk.reshape(84, -1)
            e += torch.einsum("ki,kl,li->i", flat, hessian, flat).view_as(e) / 2
    # 200 copies of each sample, each with its own random draw: the average is a 200-draw estimate.
    h = gauss_newton_diagonal(model, x.repeat(200, 1, 1, 1), t.repeat(200), torch.Generator().manual_seed(1))
    for p, ex in zip(params, exact):
        assert (h[p] - ex).abs().max() <= 0.25 * ex.abs().max()


def test_sdlm_step_and_schedule():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = SDLM([p], lr=0.1, mu=0.02)
    p.grad = torch.tensor([1.0, 1.0])
    with pytest.raises(RuntimeError, match="curvature"):
        opt.step()
    opt.set_curvature({p: torch.tensor([0.0, 0.98])})
    opt.step()
    torch.testing.assert_close(p.data, torch.tensor([1.0 - 0.1 / 0.02, 2.0 - 0.1 / 1.0]))
    with pytest.raises(ValueError):
        opt.set_curvature({p: torch.tensor([-1.0, 0.0])})
    assert [paper_learning_rate(e) for e in range(14)] == (
        [5e-4] * 2 + [2e-4] * 3 + [1e-4] * 3 + [5e-5] * 4 + [1e-5] * 2)


@pytest.mark.parametrize("cls", [LeNet5, LeNet5FullC3])
def test_folded_squash_equals_layer_by_layer(cls):
    # The trunk folds A and S into the weights; the function must be the paper's, layer by layer.
    torch.manual_seed(0)
    model = cls().double()
    x = torch.randn(3, 1, 32, 32, dtype=torch.double)
    h = squash(model.c1(x))
    h = squash(model.s2(h))
    h = squash(model.c3(h))
    h = squash(model.s4(h))
    h = squash(model.c5(h)).flatten(1)
    h = squash(model.f6(h))
    torch.testing.assert_close(model.features(x), h)
    torch.testing.assert_close(model(x), model.rbf(h))
