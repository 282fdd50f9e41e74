import pytest
import torch
import torch.nn.functional as F

from ganforge import conv
from ganforge.losses import gradient_penalty
from ganforge.models import Schedule, StepContext, build_model
from ganforge.models.dfgan import ma_gp

# (transposed, in channels, out channels, kernel, stride, padding, output_padding, groups, input size):
# every convolution PGGAN's and DF-GAN's discriminators use, PGGAN's fused "up", grouped convs, and
# odd input sizes of strided convs, whose input gradient needs an output_padding.
CASES = {
    "3x3 s1 p1": (False, 2, 3, 3, 1, 1, 0, 1, 4),
    "1x1 s1 p0": (False, 2, 3, 1, 1, 0, 0, 1, 4),
    "4x4 s2 p1 (down, DF-GAN conv0)": (False, 2, 3, 4, 2, 1, 0, 1, 6),
    "4x4 s2 p1, odd input": (False, 2, 3, 4, 2, 1, 0, 1, 5),
    "4x4 s1 p0 valid": (False, 2, 3, 4, 1, 0, 0, 1, 5),
    "3x3 s2 p1, groups 2": (False, 4, 2, 3, 2, 1, 0, 2, 5),
    "transposed 4x4 s2 p1 (up)": (True, 2, 3, 4, 2, 1, 0, 1, 3),
    "transposed 3x3 s2 p1 output_padding 1, groups 2": (True, 4, 2, 3, 2, 1, 1, 2, 3),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tensors here are tiny: a second thread only adds waits, long ones when another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def case_tensors(case: str, dtype=torch.float64):
    """(x, weight, bias) requiring grad, and the op of ganforge.conv and of torch.nn.functional."""
    transposed, cin, cout, k, stride, padding, output_padding, groups, size = CASES[case]
    g = torch.Generator().manual_seed(0)
    weight_shape = (cin, cout // groups, k, k) if transposed else (cout, cin // groups, k, k)
    x, weight, bias = (torch.randn(shape, generator=g, dtype=dtype).requires_grad_(True)
                       for shape in ((2, cin, size, size), weight_shape, (cout,)))
    if transposed:
        kw = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups)
        ours, native = (lambda *a: conv.conv_transpose2d(*a, **kw)), (lambda *a: F.conv_transpose2d(*a, **kw))
    else:
        kw = dict(stride=stride, padding=padding, groups=groups)
        ours, native = (lambda *a: conv.conv2d(*a, **kw)), (lambda *a: F.conv2d(*a, **kw))
    return (x, weight, bias), ours, native


def penalty_derivatives(op, x, weight, bias):
    """A penalty's derivatives: the output, the gradients of a smooth score w.r.t. x and the weight
    (kept as a graph), and the gradients of their squared norm w.r.t. x, the weight and the bias."""
    out = op(x, weight, bias)
    gx, gw = torch.autograd.grad(F.softplus(out).sum(), (x, weight), create_graph=True)
    second = torch.autograd.grad(gx.pow(2).sum() + gw.pow(2).sum(), (x, weight, bias))
    return (out, gx, gw, *second)


def node_names(t: torch.Tensor) -> set[str]:
    """The names of every node of t's autograd graph."""
    names, seen, stack = set(), set(), [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(node.name())
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


@pytest.mark.parametrize("case", CASES)
def test_gradcheck_and_gradgradcheck(case):
    inputs, ours, _ = case_tensors(case)
    with conv.force(True):  # fast mode: random projections of the Jacobians, a few calls instead of one per element
        assert torch.autograd.gradcheck(ours, inputs, fast_mode=True)
        assert torch.autograd.gradgradcheck(ours, inputs, fast_mode=True)


@pytest.mark.parametrize("case", CASES)
def test_values_and_first_and_second_derivatives_equal_native(case):
    inputs, ours, native = case_tensors(case)
    with conv.force(True):
        got = penalty_derivatives(ours, *inputs)
    assert {"_ConvolutionBackward", "_WeightGradientBackward"} <= node_names(got[1]) | node_names(got[2])
    expected = penalty_derivatives(native, *inputs)
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", ["4x4 s2 p1 (down, DF-GAN conv0)", "transposed 4x4 s2 p1 (up)"])
def test_bfloat16_autocast_double_backward_gives_float32_gradients(case):
    (x, weight, bias), ours, native = case_tensors(case, dtype=torch.float32)

    def penalty_gradients(op):
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the first backward under autocast, as in the losses
            out = op(x, weight, bias)
            (gx,) = torch.autograd.grad(F.softplus(out.float()).sum(), x, create_graph=True)
        assert out.dtype == torch.bfloat16 and gx.dtype == torch.float32
        return torch.autograd.grad(gx.pow(2).sum(), (x, weight, bias))  # the second outside, as in training_step

    with conv.force(True):
        got = penalty_gradients(ours)
    expected = penalty_gradients(native)
    for a, b in zip(got, expected):
        assert a.dtype == torch.float32
        assert (a - b).norm() <= 0.05 * b.norm()  # both in bfloat16: agreement to its precision


def test_channels_last_input():
    (x, weight, bias), ours, native = case_tensors("3x3 s1 p1")
    x_nhwc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    with conv.force(True):
        got = penalty_derivatives(ours, x_nhwc, weight, bias)
    expected = penalty_derivatives(native, x_nhwc, weight, bias)
    for out in (got[0], got[1], expected[0], expected[1]):  # the output and the input's gradient stay NHWC
        assert out.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_dilation_other_than_one_is_refused():
    (x, weight, bias), _, _ = case_tensors("3x3 s1 p1")
    with pytest.raises(ValueError, match="dilation 1 only"):
        conv.conv2d(x, weight, bias, padding=2, dilation=2)


def test_conv2d_module_is_an_nn_conv2d_with_the_same_state_and_initialisation():
    """DF-GAN's D swapped nn.Conv2d for it: its snapshots keep their keys and a seed its initial weights."""
    torch.manual_seed(0)
    native = torch.nn.Conv2d(3, 4, 4, 2, 1)
    torch.manual_seed(0)
    ours = conv.Conv2d(3, 4, 4, 2, 1)
    assert native.state_dict().keys() == ours.state_dict().keys()
    assert all(torch.equal(native.state_dict()[k], v) for k, v in ours.state_dict().items())
    x = torch.randn(2, 3, 8, 8)
    with conv.force(True):
        torch.testing.assert_close(ours(x), native(x))


def test_cpu_tensors_take_the_native_ops_by_default():
    # On the CPU the custom path was no faster (float32) or a little slower (bfloat16): native ops there.
    (x, weight, bias), _, _ = case_tensors("3x3 s1 p1")
    assert conv.enabled is None
    assert "ConvolutionBackward0" in node_names(conv.conv2d(x, weight, bias, padding=1))


def test_penalties_compute_no_weight_gradient_in_their_first_backward(monkeypatch):
    """gradient_penalty and ma_gp differentiate D w.r.t. its inputs only: no weight gradient is computed
    there only to be dropped, and the weights still get the penalty's gradient, equal to native convs'."""
    calls = []
    forward = conv._WeightGradient.forward
    monkeypatch.setattr(conv._WeightGradient, "forward", staticmethod(lambda *a: calls.append(1) or forward(*a)))
    (x, weight, bias), ours, native = case_tensors("4x4 s2 p1 (down, DF-GAN conv0)")
    sentences = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    penalties = {
        "gradient_penalty": lambda op: gradient_penalty(lambda p: F.softplus(op(p, weight, bias)).flatten(1).sum(1), x),
        "ma_gp": lambda op: ma_gp(F.softplus(op(x, weight, bias)).flatten(1).sum(1) + sentences.sum(1), x, sentences),
    }
    for name, penalty_of in penalties.items():
        calls.clear()
        with conv.force(True):
            penalty = penalty_of(ours)
            assert not calls, name
            got = torch.autograd.grad(penalty, (weight, bias))
        assert calls, name  # the penalty's own backward: the weights' second derivatives are convolutions too
        expected = torch.autograd.grad(penalty_of(native), (weight, bias))
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


def pggan_losses(model, phase: str) -> tuple[torch.Tensor, dict]:
    """A PGGAN phase's loss and the gradient of every parameter, with fixed noise."""
    gen = torch.Generator().manual_seed(1)
    reals = torch.rand(4, 3, 16, 16, generator=gen, dtype=torch.float64) * 2 - 1
    ctx = StepContext(latents=lambda n: torch.randn(n, model.z_dim, generator=gen, dtype=torch.float64),
                      schedule=Schedule(resolution=16, batch=4, alpha=0.5), generator=gen)
    model.zero_grad(set_to_none=True)
    loss = model.loss(phase, reals, model.training_condition(torch.zeros(4, dtype=torch.long), ctx), ctx).loss
    loss.backward()
    return loss, {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def small_pggan():
    torch.manual_seed(0)
    # fused_min 8: the fused "up" and "down" convolutions at 8x8 and 16x16
    return build_model("pggan", dict(resolution=16, channels=3, fmap_base=64, fmap_max=8, z_dim=16,
                                     fused_min=8)).double()


def dfgan_d_loss(model) -> tuple[torch.Tensor, dict]:
    gen = torch.Generator().manual_seed(1)
    model.prepare_synthetic(4, "cpu", gen)
    model.captions.embeddings = model.captions.embeddings.double()
    reals = torch.rand(4, 1, 16, 16, generator=gen, dtype=torch.float64) * 2 - 1
    ctx = StepContext(latents=lambda n: torch.randn(n, model.z_dim, generator=gen, dtype=torch.float64),
                      schedule=Schedule(resolution=16, batch=4), generator=gen, indices=torch.arange(4))
    model.zero_grad(set_to_none=True)
    loss = model.loss("D", reals, model.training_condition(torch.zeros(4, dtype=torch.long), ctx), ctx).loss
    loss.backward()
    return loss, {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def small_dfgan():
    torch.manual_seed(0)
    return build_model("dfgan", dict(resolution=16, channels=1, nf=4, text_encoder="bilstm")).double()


def assert_same_losses_and_gradients(compute):
    with conv.force(True):
        loss, grads = compute()
    with conv.force(False):
        native_loss, native_grads = compute()
    torch.testing.assert_close(loss, native_loss, rtol=1e-9, atol=1e-12)
    assert grads.keys() == native_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], native_grads[name], rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("phase", ["D", "G"])
def test_pggan_losses_and_gradients_equal_native_convs(phase):
    model = small_pggan()
    assert_same_losses_and_gradients(lambda: pggan_losses(model, phase))


def test_dfgan_d_phase_loss_and_gradients_equal_native_convs():
    model = small_dfgan()
    assert_same_losses_and_gradients(lambda: dfgan_d_loss(model))


def test_the_models_convolve_only_through_the_custom_path():
    """The graph of each phase (D's with its gradient penalty) holds custom convolutions and no native one:
    fails if a convolution of PGGAN or of DF-GAN's D goes back to torch's own."""
    pggan, dfgan = small_pggan(), small_dfgan()
    with conv.force(True):
        for loss, _ in (pggan_losses(pggan, "D"), pggan_losses(pggan, "G"), dfgan_d_loss(dfgan)):
            names = node_names(loss)
            assert "_ConvolutionBackward" in names
            assert not [name for name in names if name.startswith("Convolution")], names
