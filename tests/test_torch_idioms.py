"""torch.nn.Module idioms on fastrnn layers, and from_torch on modules that do more than
torch's recurrence: checked against live torch."""
import warnings

import numpy as np
import pytest

import fastrnn

torch = pytest.importorskip("torch")
import torch.nn.utils.prune  # noqa: E402  (a submodule torch does not import itself)


def _close(a, b, tol=1e-5):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def _torch_out(m, x):
    with torch.no_grad():
        return m(torch.from_numpy(x))[0].numpy()


def test_weight_attributes_read_and_assign_like_torch():
    torch.manual_seed(0)
    m = torch.nn.GRU(4, 6, num_layers=2)
    layer = fastrnn.from_torch(m)
    x = np.random.default_rng(0).standard_normal((5, 3, 4)).astype(np.float32)
    assert layer.weight_ih_l0 is layer.parameters()["weight_ih_l0"]
    np.testing.assert_array_equal(layer.bias_hh_l1, m.bias_hh_l1.detach().numpy())
    # assignment loads the weight (validated, re-packed), as with torch's parameters
    w = np.random.default_rng(1).standard_normal((18, 4)).astype(np.float32)
    layer(x)                                    # (packed before the change)
    layer.weight_ih_l0 = w
    with torch.no_grad():
        m.weight_ih_l0.copy_(torch.from_numpy(w))
    _close(layer(x)[0], _torch_out(m, x))
    np.testing.assert_array_equal(layer.state_dict()["weight_ih_l0"], w)
    # augmented assignment: the in-place product is loaded too
    layer.weight_hh_l1 *= 0.5
    with torch.no_grad():
        m.weight_hh_l1.mul_(0.5)
    _close(layer(x)[0], _torch_out(m, x))
    with pytest.raises(ValueError, match="weight_ih_l0.*expected shape"):
        layer.weight_ih_l0 = np.zeros((3, 3), np.float32)
    with pytest.raises(AttributeError, match="weight_ih_l9"):
        layer.weight_ih_l9
    layer.note = "kept"                         # other attributes are ordinary
    assert layer.note == "kept"


def test_load_state_dict_reports_keys_like_torch():
    torch.manual_seed(0)
    wrapped = torch.nn.Sequential(torch.nn.LSTM(3, 5))
    sd = {k: v.numpy() for k, v in wrapped.state_dict().items()}
    layer = fastrnn.LSTM(3, 5)
    got = layer.load_state_dict(sd, strict=False)
    ref = torch.nn.LSTM(3, 5).load_state_dict(wrapped.state_dict(), strict=False)
    assert sorted(got.missing_keys) == sorted(ref.missing_keys)
    assert sorted(got.unexpected_keys) == sorted(ref.unexpected_keys)
    assert layer.load_state_dict(layer.state_dict()) == ([], [])


@pytest.mark.parametrize("kw", [dict(num_layers=2, bidirectional=True),
                                dict(proj_size=3, num_layers=2), dict(bias=False)])
def test_named_parameters_and_all_weights_like_torch(kw):
    m = torch.nn.LSTM(4, 6, **kw)
    layer = fastrnn.from_torch(m)
    assert [n for n, _ in layer.named_parameters()] == [n for n, _ in m.named_parameters()]
    assert ([[a.shape for a in per] for per in layer.all_weights]
            == [[tuple(p.shape) for p in per] for per in m.all_weights])


def test_eval_train_to_float_double():
    torch.manual_seed(0)
    m = torch.nn.LSTM(4, 6, num_layers=2).double()
    layer = fastrnn.from_torch(m).float()
    assert layer.dtype == np.float32 and layer.eval() is layer and not layer.training
    assert layer.train() is layer and layer.training
    with pytest.raises(TypeError, match="mode"):
        layer.train("yes")
    x = np.random.default_rng(0).standard_normal((5, 2, 4))
    layer(x.astype(np.float32))                 # (packed in float32 first)
    assert layer.to(torch.float64) is layer and layer.dtype == np.float64
    assert layer.training                       # (kept across the conversion)
    out = layer(x)[0]
    assert out.dtype == np.float64
    _close(out, _torch_out(m, x), tol=1e-12)
    assert layer.to("cpu") is layer and layer.double() is layer
    with pytest.raises(ValueError, match="cuda"):
        layer.to("cuda")
    assert fastrnn.GRU(2, 3, dtype=torch.float64).dtype == np.float64
    layer.flatten_parameters()


def test_flags_and_activations_are_checked():
    for kw in ("go_backwards", "reset_after"):
        with pytest.raises(TypeError, match=kw):
            fastrnn.GRU(2, 3, **{kw: "False"})
    for kw in ("peepholes", "input_forget"):
        with pytest.raises(TypeError, match=kw):
            fastrnn.LSTM(2, 3, **{kw: "no"})
    with pytest.raises(ValueError, match="disagree"):
        fastrnn.LSTM(2, 3, activations=["sigmoid", "tanh", "tanh"],
                     gate_activation="hardsigmoid")
    with pytest.raises(ValueError, match="nonlinearity"):
        fastrnn.SimpleRNN(2, 3, nonlinearity="relu", activations=["tanh"])
    # agreeing ones (as a config round trip gives) are fine
    relu = fastrnn.SimpleRNN(2, 3, nonlinearity="relu", bidirectional=True)
    again = fastrnn.layer_from_config(relu.get_config(), relu.state_dict())
    assert again.nonlinearity == "relu"


def test_packed_sequence_is_a_clear_error():
    from torch.nn.utils.rnn import pack_padded_sequence
    x = torch.zeros(5, 2, 3)
    packed = pack_padded_sequence(x, [5, 3])
    with pytest.raises(TypeError, match="PackedSequence.*lengths="):
        fastrnn.LSTM(3, 4)(packed)


class _Scaled(torch.nn.LSTM):
    def forward(self, x, hx=None):
        return super().forward(x * 2, hx)


def test_from_torch_warns_where_the_module_does_more():
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    with pytest.warns(UserWarning, match="overrides forward"):
        fastrnn.from_torch(_Scaled(3, 4))
    m = torch.nn.GRU(3, 4)
    m.register_forward_pre_hook(lambda mod, args: (args[0] * 2,))
    with pytest.warns(UserWarning, match="pre-hook"):
        fastrnn.from_torch(m)
    with pytest.warns(UserWarning, match="training mode with dropout=0.5"):
        fastrnn.from_torch(torch.nn.LSTM(3, 4, num_layers=2, dropout=0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # a plain module in eval(): no warning
        layer = fastrnn.from_torch(torch.nn.LSTM(3, 4, num_layers=2, dropout=0.5).eval())
    assert layer.dropout == 0.5 and layer(x)[0].shape == (5, 2, 4)


def _effective(make):
    torch.manual_seed(0)
    m = torch.nn.LSTM(4, 6, num_layers=2, bidirectional=True).eval()   # (spectral_norm:
    made = make(m)                              # no power iteration per call)
    m = m if made is None else made
    x = np.random.default_rng(0).standard_normal((7, 3, 4)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)   # (old weight_norm)
        layer = fastrnn.from_torch(m)
    with torch.no_grad():       # (the compiled wrapper's own module: no compiling here)
        ref = getattr(m, "_orig_mod", m)(torch.from_numpy(x))[0].numpy()
    return layer(x)[0], ref


@pytest.mark.parametrize("make", [
    lambda m: torch.nn.utils.parametrizations.weight_norm(m, "weight_hh_l0"),
    lambda m: torch.nn.utils.parametrizations.spectral_norm(m, "weight_ih_l1"),
    lambda m: torch.nn.utils.prune.l1_unstructured(m, "weight_hh_l1", amount=0.5),
    lambda m: torch.compile(m),
], ids=["parametrized_weight_norm", "spectral_norm", "prune", "compile"])
def test_from_torch_reads_effective_weights(make):
    out, ref = _effective(make)
    _close(out, ref)


def test_from_torch_old_weight_norm():
    def make(m):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.nn.utils.weight_norm(m, "weight_ih_l0")
        with torch.no_grad():
            m(torch.zeros(1, 1, 4))             # (its pre-hook refreshes the weight)
    out, ref = _effective(make)
    _close(out, ref)


def test_from_torch_refuses_quantized():
    q = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.LSTM(4, 6)),
                                               {torch.nn.LSTM}, dtype=torch.qint8)
    with pytest.raises(TypeError, match="quantized"):
        fastrnn.from_torch(q[0])


def test_repr_in_torch_order():
    kw = dict(num_layers=2, proj_size=5, bidirectional=True, batch_first=True, dropout=0.1,
              bias=False)
    assert repr(fastrnn.LSTM(10, 20, **kw)) == repr(torch.nn.LSTM(10, 20, **kw))
    assert repr(fastrnn.GRU(3, 4, 2, False, True)) == repr(torch.nn.GRU(3, 4, 2, False, True))


@pytest.mark.parametrize("kind", ["prune", "weight_norm"])
@pytest.mark.parametrize("module", ["LSTM", "LSTMCell"])
def test_from_torch_after_an_optimizer_step(kind, module):
    """Pruned and old-style weight-normed modules refresh their weight attribute only in
    the next forward's pre-hook: after `loss.backward(); opt.step()` it held the previous
    step's weights, and from_torch copied those (0.07-0.16 off torch's next forward)."""
    torch.manual_seed(0)
    m = getattr(torch.nn, module)(4, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if kind == "prune":
            torch.nn.utils.prune.l1_unstructured(m, "weight_hh" + ("_l0" if module == "LSTM"
                                                                   else ""), amount=0.5)
        else:
            torch.nn.utils.weight_norm(m, "weight_ih" + ("_l0" if module == "LSTM" else ""))
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    x = torch.randn(5, 3, 4) if module == "LSTM" else torch.randn(3, 4)
    out = m(x)[0]
    out.sum().backward()
    opt.step()                              # (no forward after it)
    layer = fastrnn.from_torch(m)
    with torch.no_grad():
        ref = m(x)[0].numpy()
    got = layer(x.numpy())[0]
    _close(got, ref)


def test_more_module_idioms_on_layers():
    layer = fastrnn.LSTM(3, 4)
    assert [n for n, _ in layer.named_parameters(prefix="rnn")][:2] == [
        "rnn.weight_ih_l0", "rnn.weight_hh_l0"]
    assert layer.cpu() is layer and layer.requires_grad_(False) is layer
    assert layer.to(torch.zeros(2, dtype=torch.float64)) is layer       # a tensor's dtype
    assert layer.dtype == np.float64
    with pytest.raises(TypeError, match="float32 or float64, got float16"):
        layer.to(torch.float16)                 # (it said "cannot move to torch.float16")
    with pytest.raises(ValueError, match="cuda:0"):
        layer.to("cuda:0")


def test_cells_take_the_module_idioms_too():
    torch.manual_seed(0)
    m = torch.nn.LSTMCell(3, 4)
    cell = fastrnn.from_torch(m)
    np.testing.assert_array_equal(cell.weight_ih, m.weight_ih.detach().numpy())
    cell.weight_hh *= 0.5                       # loads it, as for layers
    with torch.no_grad():
        m.weight_hh.mul_(0.5)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    with torch.no_grad():
        ref = m(torch.from_numpy(x))[0].numpy()
    _close(cell(x)[0], ref)
    assert [n for n, _ in cell.named_parameters()] == [n for n, _ in m.named_parameters()]
    assert cell.eval() is cell and not cell.training and cell.train().training
    assert cell.double() is cell and cell.dtype == np.float64
    _close(cell(x.astype(np.float64))[0], ref)


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_from_torch_takes_scripted_cells(kind):
    """torch.jit.script of a cell (a scripted LSTM was taken, a scripted cell refused)."""
    torch.manual_seed(0)
    kw = {"nonlinearity": "relu"} if kind == "RNNCell" else {}
    m = torch.jit.script(getattr(torch.nn, kind)(3, 4, **kw))
    cell = fastrnn.from_torch(m)
    assert type(cell).__name__ == kind
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    with torch.no_grad():
        ref = m(torch.from_numpy(x))
    ref = (ref[0] if isinstance(ref, tuple) else ref).numpy()
    got = cell(x)
    _close(got[0] if isinstance(got, tuple) else got, ref)
