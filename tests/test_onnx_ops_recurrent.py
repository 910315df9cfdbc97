"""The ONNX frontend's recurrent (LSTM, GRU, RNN) and control-flow (Scan, Loop, If) converters: small models
built with onnx.helper, imported, run in graphopt's interpreter and compared with onnxruntime; torch.onnx
exports of streaming GRU/LSTM cells (the hidden state as graph I/O) import and build end to end."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import graphopt  # noqa: E402
from graphopt.frontends.onnx import CONVERTERS, OnnxImportError, load  # noqa: E402
from graphopt.ir.interpreter import run_graph  # noqa: E402

F32 = TensorProto.FLOAT


def vi(name, shape, elem=F32):
    return helper.make_tensor_value_info(name, elem, shape)


def save(path, nodes, inputs, outputs, inits=None, opset=17):
    inits = [numpy_helper.from_array(np.asarray(a), n) for n, a in (inits or {}).items()]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    onnx.save(model, str(path))
    return path


def ort_run(path, feeds):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def ours(path, feeds):
    """graphopt's outputs by ONNX name (state outputs included) for these feeds."""
    spec = load(path)
    g = spec.trace()
    outs, new_state = run_graph(g, [feeds[v.name] for v in g.inputs], [feeds[s.name] for s in g.state])
    got = dict(zip(g.output_names, outs))
    for s, v in zip(g.state, new_state):
        got[g.meta["state_io"][s.name][1]] = v
    return got, g


def compare(path, feeds, ref_path=None, rtol=1e-5, atol=1e-6):
    got, g = ours(path, feeds)
    want = ort_run(ref_path or path, feeds)
    assert set(got) == set(want), (sorted(got), sorted(want))
    for k, w in want.items():
        assert got[k].shape == w.shape, (k, got[k].shape, w.shape)
        np.testing.assert_allclose(got[k], w, rtol=rtol, atol=atol, err_msg=k)
    return g


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ---- LSTM / GRU / RNN ------------------------------------------------------------------------------

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULTS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}


def recurrent(tmp_path, kind, *, seq=3, batch=2, n_in=4, hidden=5, direction="forward", layout=0, bias=True,
              init_h=True, init_c=True, peep=False, seq_lens=None, outputs=("Y", "Y_h", "Y_c"), opset=17, seed=0,
              **attrs):
    """Save a one-node recurrent model (and, for layout 1, which onnxruntime does not run, its layout-0 twin
    wrapped in Transposes as the reference); returns (path, reference path, feeds)."""
    rng = np.random.default_rng(seed)
    nd = 2 if direction == "bidirectional" else 1
    g = GATES[kind]
    inits = {"W": rand(rng, nd, g * hidden, n_in, scale=0.5), "R": rand(rng, nd, g * hidden, hidden, scale=0.5)}
    names = ["X", "W", "R"]
    names.append("B" if bias else "")
    if bias:
        inits["B"] = rand(rng, nd, 2 * g * hidden, scale=0.5)
    names.append("seq_lens" if seq_lens is not None else "")
    if seq_lens is not None:
        inits["seq_lens"] = np.asarray(seq_lens, np.int32)
    x_shape = (batch, seq, n_in) if layout else (seq, batch, n_in)
    s_shape = (batch, nd, hidden) if layout else (nd, batch, hidden)
    feeds = {"X": rand(rng, *x_shape)}
    inputs = [vi("X", x_shape)]
    states = [("initial_h", init_h)] + ([("initial_c", init_c)] if kind == "LSTM" else [])
    for name, given in states:
        names.append(name if given else "")
        if given:
            feeds[name] = rand(rng, *s_shape)
            inputs.append(vi(name, s_shape))
    if kind == "LSTM" and peep:
        names.append("P")
        inits["P"] = rand(rng, nd, 3 * hidden, scale=0.5)
    while names[-1] == "":
        names.pop()
    outputs = list(outputs[:3 if kind == "LSTM" else 2])
    while outputs[-1] == "":
        outputs.pop()
    attrs = dict(hidden_size=hidden, direction=direction, **attrs)
    outs = [vi(o, None) for o in outputs if o]

    def node(layout_attr, ins, outs_):
        extra = {"layout": layout_attr} if opset >= 14 else {}
        return helper.make_node(kind, ins, outs_, **attrs, **extra)

    path = save(tmp_path / f"{kind}.onnx", [node(layout, names, outputs)], inputs, outs, inits, opset)
    if not layout:
        return path, None, feeds
    # the reference: layout 0 between transposes
    pre = [helper.make_node("Transpose", [n], [n + "_t"], perm=[1, 0, 2])
           for n in ["X"] + [s for s, given in states if given]]
    ins0 = [n + "_t" if n in feeds else n for n in names]
    outs0 = [o + "_t" if o else "" for o in outputs]
    post = []
    for k, o in enumerate(outputs):
        if o:
            post.append(helper.make_node("Transpose", [o + "_t"], [o], perm=[2, 0, 1, 3] if k == 0 else [1, 0, 2]))
    ref = save(tmp_path / f"{kind}_ref.onnx", pre + [node(0, ins0, outs0)] + post, inputs, outs, inits, opset)
    return path, ref, feeds


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_directions(tmp_path, kind, direction):
    path, _, feeds = recurrent(tmp_path, kind, direction=direction)
    g = compare(path, feeds)
    assert "dot" in g.op_histogram()


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_layout_1(tmp_path, kind, direction):
    path, ref, feeds = recurrent(tmp_path, kind, direction=direction, layout=1, opset=14)
    compare(path, feeds, ref)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_opset_11(tmp_path, kind):
    path, _, feeds = recurrent(tmp_path, kind, direction="bidirectional", opset=11)
    compare(path, feeds)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_optional_inputs_omitted(tmp_path, kind):
    path, _, feeds = recurrent(tmp_path, kind, bias=False, init_h=False, init_c=False, direction="bidirectional")
    compare(path, feeds)


@pytest.mark.parametrize("outputs", [("", "Y_h", "Y_c"), ("Y",), ("", "", "Y_c"), ("", "Y_h")])
def test_outputs_optional(tmp_path, outputs):
    path, _, feeds = recurrent(tmp_path, "LSTM", outputs=outputs, direction="bidirectional")
    g = compare(path, feeds)
    assert len(g.outputs) == len([o for o in outputs if o])


def test_lstm_peepholes_input_forget_clip(tmp_path):
    path, _, feeds = recurrent(tmp_path, "LSTM", peep=True, direction="bidirectional", clip=0.7)
    compare(path, feeds)
    path, _, feeds = recurrent(tmp_path, "LSTM", peep=True, input_forget=1, seed=1)
    compare(path, feeds)


@pytest.mark.parametrize("lbr", [0, 1])
def test_gru_linear_before_reset(tmp_path, lbr):
    path, _, feeds = recurrent(tmp_path, "GRU", direction="bidirectional", linear_before_reset=lbr, clip=1.5)
    compare(path, feeds)


@pytest.mark.parametrize("kind,acts,alpha,beta", [
    ("RNN", ["Relu"], None, None),
    ("RNN", ["Relu", "Sigmoid"], None, None),  # bidirectional
    ("GRU", ["Sigmoid", "Relu"], None, None),
    ("LSTM", ["Sigmoid", "Tanh", "Relu"], None, None),
    ("LSTM", ["HardSigmoid", "LeakyRelu", "Tanh"], [0.3, 0.05], [0.4]),
    ("GRU", ["HardSigmoid", "Softsign"], None, None),
    ("RNN", ["Elu"], [0.5], None),
    ("RNN", ["Softplus"], None, None),
    ("RNN", ["Affine"], [0.7], [0.2]),
    ("GRU", ["ScaledTanh", "ThresholdedRelu"], [0.8, 0.1], [1.3]),
    ("LSTM", ["Elu", "Tanh", "Tanh", "Sigmoid", "Softplus", "Tanh"], [0.5], None),  # bidirectional
])
def test_activations(tmp_path, kind, acts, alpha, beta):
    extra = {}
    if alpha:
        extra["activation_alpha"] = alpha
    if beta:
        extra["activation_beta"] = beta
    direction = "bidirectional" if len(acts) == 2 * len(DEFAULTS[kind]) else "forward"
    path, _, feeds = recurrent(tmp_path, kind, activations=acts, direction=direction, **extra)
    compare(path, feeds)


def test_sequence_lens(tmp_path):
    path, _, feeds = recurrent(tmp_path, "GRU", seq_lens=[3, 3])
    compare(path, feeds)
    path, _, _ = recurrent(tmp_path, "GRU", seq_lens=[3, 2])
    with pytest.raises(OnnxImportError, match="sequence_lens .* full length"):
        load(path).trace()


def test_unsupported_activation_fails(tmp_path):
    path, _, _ = recurrent(tmp_path, "RNN", activations=["Gelu"])
    with pytest.raises(OnnxImportError, match="activation 'Gelu' is not supported"):
        load(path).trace()
    path, _, _ = recurrent(tmp_path, "GRU", activations=["Sigmoid", "Tanh"], direction="bidirectional")
    with pytest.raises(OnnxImportError, match="2 activations given; GRU with 2 direction"):
        load(path).trace()


def test_runtime_weights_fail(tmp_path):
    x = np.zeros((2, 1, 3), np.float32)
    path = save(tmp_path / "w.onnx", [helper.make_node("RNN", ["X", "W", "R"], ["Y"], hidden_size=2)],
                [vi("X", x.shape), vi("W", (1, 2, 3))], [vi("Y", None)], {"R": np.zeros((1, 2, 2), np.float32)})
    with pytest.raises(OnnxImportError, match="W is computed at runtime"):
        load(path).trace()


def test_long_sequence(tmp_path):
    path, _, feeds = recurrent(tmp_path, "LSTM", seq=40, batch=1, hidden=8, direction="bidirectional")
    g = compare(path, feeds, rtol=1e-4, atol=1e-5)
    # one input projection per direction and one recurrent dot per step
    assert g.op_histogram()["dot"] == 2 * (1 + 40)


def test_streaming_gru_state_pair(tmp_path):
    """A single step with the hidden state as graph I/O (h_in -> h_out): the state is carried."""
    rng = np.random.default_rng(3)
    H, I = 6, 4
    inits = {"W": rand(rng, 1, 3 * H, I, scale=0.5), "R": rand(rng, 1, 3 * H, H, scale=0.5),
             "B": rand(rng, 1, 6 * H, scale=0.5)}
    nodes = [helper.make_node("GRU", ["x", "W", "R", "B", "", "h_in"], ["Y", "h_out"], hidden_size=H,
                              linear_before_reset=1),
             helper.make_node("Tanh", ["Y"], ["y"])]
    path = save(tmp_path / "cell.onnx", nodes, [vi("x", (1, 1, I)), vi("h_in", (1, 1, H))],
                [vi("y", (1, 1, 1, H)), vi("h_out", (1, 1, H))], inits)
    spec = load(path)
    assert spec.pairs == [("h_in", "h_out")]
    g = spec.trace()
    assert [s.name for s in g.state] == ["h_in"]
    h = np.zeros((1, 1, H), np.float32)
    for t in range(4):
        x = rand(rng, 1, 1, I)
        (y,), (h_new,) = run_graph(g, [x], [h])
        want = ort_run(path, {"x": x, "h_in": h})
        np.testing.assert_allclose(y, want["y"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(h_new, want["h_out"], rtol=1e-5, atol=1e-6)
        h = h_new


# ---- torch.onnx exports ----------------------------------------------------------------------------

def _torch_export(tmp_path, module, args, names, outputs, dynamo=False, **kw):
    torch = pytest.importorskip("torch")
    import warnings
    import contextlib
    import io
    path = tmp_path / ("dyn.onnx" if dynamo else "ts.onnx")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            kw["verbose"] = False
        torch.onnx.export(module.eval(), args, str(path), input_names=names, output_names=outputs, dynamo=dynamo,
                          **kw)
    return path


def _skip_if_other_ops_missing(fn):
    """Run fn; skip (not fail) where the model needs an operator another converter family has not landed."""
    try:
        return fn()
    except OnnxImportError as e:
        if "is not supported by graphopt's ONNX frontend" in str(e):
            pytest.skip(f"needs a converter that is not there yet: {e}")
        raise


def test_torch_gru_cell_builds_end_to_end(tmp_path):
    """torch.onnx (TorchScript exporter) of a streaming nn.GRU: h as graph I/O, the state carried; build
    verifies the ONNX artifact against onnxruntime over 40 frames."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    class Cell(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(4, 8)

        def forward(self, x, h_in):
            _, h = self.gru(x, h_in)
            return torch.sigmoid(h) * 2.0, h

    path = _torch_export(tmp_path, Cell(), (torch.randn(1, 1, 4), torch.zeros(1, 1, 8)), ["x", "h_in"],
                         ["y", "h_out"], opset_version=17)
    spec = load(path)
    assert spec.pairs == [("h_in", "h_out")]
    rng = np.random.default_rng(0)
    x, h = rand(rng, 1, 1, 4), rand(rng, 1, 1, 8)
    compare(path, {"x": x, "h_in": h})
    art = graphopt.build(spec, target="onnx", out=tmp_path / "a", frames=40, log=lambda m: None)
    assert art is not None


def test_torch_gru_linear_head(tmp_path):
    """The usual streaming form: y, h = gru(x, h); fc(y) (needs Squeeze and MatMul from other families)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru, self.fc = torch.nn.GRU(4, 6), torch.nn.Linear(6, 2)

        def forward(self, x, h_in):
            y, h = self.gru(x, h_in)
            return self.fc(y), h

    path = _torch_export(tmp_path, Net(), (torch.randn(1, 1, 4), torch.zeros(1, 1, 6)), ["x", "h_in"],
                         ["y", "h_out"], opset_version=17)
    rng = np.random.default_rng(1)
    _skip_if_other_ops_missing(lambda: compare(path, {"x": rand(rng, 1, 1, 4), "h_in": rand(rng, 1, 1, 6)}))


def test_torch_lstm_two_layers_batch_first(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(2)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(4, 6, num_layers=2, batch_first=True, bidirectional=True)

        def forward(self, x, h_in, c_in):
            y, (h, c) = self.lstm(x, (h_in, c_in))
            return torch.tanh(y), h, c

    args = (torch.randn(1, 5, 4), torch.zeros(4, 1, 6), torch.zeros(4, 1, 6))
    path = _torch_export(tmp_path, Net(), args, ["x", "h_in", "c_in"], ["y", "h_out", "c_out"], opset_version=17)
    rng = np.random.default_rng(2)
    feeds = {"x": rand(rng, 1, 5, 4), "h_in": rand(rng, 4, 1, 6), "c_in": rand(rng, 4, 1, 6)}
    _skip_if_other_ops_missing(lambda: compare(path, feeds))


def test_torch_dynamo_gru_and_lstm(tmp_path):
    """The dynamo exporter (needs onnxscript; opset 20): it emits ONNX GRU/LSTM nodes between Slice,
    Transpose, Reshape and Concat."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    torch.manual_seed(3)

    class Gru(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(4, 6)

        def forward(self, x, h_in):
            y, h = self.gru(x, h_in)
            return torch.tanh(y), h

    class Lstm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(4, 6, num_layers=2, batch_first=True)

        def forward(self, x, h_in, c_in):
            y, (h, c) = self.lstm(x, (h_in, c_in))
            return torch.tanh(y), h, c

    rng = np.random.default_rng(3)
    path = _torch_export(tmp_path, Gru(), (torch.randn(1, 1, 4), torch.zeros(1, 1, 6)), ["x", "h_in"],
                         ["y", "h_out"], dynamo=True)
    assert load(path).pairs == [("h_in", "h_out")]
    _skip_if_other_ops_missing(lambda: compare(path, {"x": rand(rng, 1, 1, 4), "h_in": rand(rng, 1, 1, 6)}))
    path = _torch_export(tmp_path, Lstm(), (torch.randn(1, 3, 4), torch.zeros(2, 1, 6), torch.zeros(2, 1, 6)),
                         ["x", "h_in", "c_in"], ["y", "h_out", "c_out"], dynamo=True)
    feeds = {"x": rand(rng, 1, 3, 4), "h_in": rand(rng, 2, 1, 6), "c_in": rand(rng, 2, 1, 6)}
    _skip_if_other_ops_missing(lambda: compare(path, feeds))


# ---- Scan ----------------------------------------------------------------------------------------

def scan_body(outer=None):
    """state s [2], x [2] -> s + x (+ outer), y = tanh(s + x) * x."""
    nodes = [helper.make_node("Add", ["s", "x"], ["s_new0"])]
    if outer:
        nodes.append(helper.make_node("Add", ["s_new0", outer], ["s_new"]))
    else:
        nodes.append(helper.make_node("Identity", ["s_new0"], ["s_new"]))
    nodes += [helper.make_node("Tanh", ["s_new"], ["t"]), helper.make_node("Mul", ["t", "x"], ["y"])]
    return helper.make_graph(nodes, "body", [vi("s", (2,)), vi("x", (2,))], [vi("s_new", (2,)), vi("y", (2,))])


@pytest.mark.parametrize("in_axis,in_dir,out_axis,out_dir", [(0, 0, 0, 0), (0, 1, 0, 0), (1, 0, 1, 1),
                                                           (-1, 1, -1, 0), (1, 1, 0, 1)])
def test_scan(tmp_path, in_axis, in_dir, out_axis, out_dir):
    rng = np.random.default_rng(4)
    x_shape = (5, 2) if in_axis == 0 else (2, 5)
    node = helper.make_node("Scan", ["s0", "xs"], ["s_final", "ys"], body=scan_body("bias"), num_scan_inputs=1,
                            scan_input_axes=[in_axis], scan_input_directions=[in_dir],
                            scan_output_axes=[out_axis], scan_output_directions=[out_dir])
    pre = helper.make_node("Mul", ["gain", "gain"], ["bias"])  # a runtime outer value the body reads
    path = save(tmp_path / "scan.onnx", [pre, node], [vi("s0", (2,)), vi("xs", x_shape), vi("gain", (2,))],
                [vi("s_final", None), vi("ys", None)])
    compare(path, {"s0": rand(rng, 2), "xs": rand(rng, *x_shape), "gain": rand(rng, 2)})


def test_scan_two_inputs_constant_outer(tmp_path):
    """Two scan inputs (one a constant), the body reading an outer initializer."""
    rng = np.random.default_rng(5)
    body = helper.make_graph(
        [helper.make_node("Mul", ["a", "b"], ["ab"]), helper.make_node("Add", ["s", "ab"], ["s1"]),
         helper.make_node("Mul", ["s1", "k"], ["s_new"]), helper.make_node("Sigmoid", ["s_new"], ["y"])],
        "body", [vi("s", (3,)), vi("a", (3,)), vi("b", (3,))], [vi("s_new", (3,)), vi("y", (3,))])
    node = helper.make_node("Scan", ["s0", "xs", "cs"], ["s_final", "ys"], body=body, num_scan_inputs=2,
                            scan_input_directions=[0, 1])
    path = save(tmp_path / "scan2.onnx", [node], [vi("s0", (3,)), vi("xs", (4, 3))], [vi("s_final", None),
                vi("ys", None)], {"cs": rand(rng, 4, 3), "k": np.float32([0.9, 1.1, 0.5])})
    compare(path, {"s0": rand(rng, 3), "xs": rand(rng, 4, 3)})


# ---- Loop ----------------------------------------------------------------------------------------

def loop_body(cond_node=None, outer=None):
    """(i, cond, v [2]) -> (cond', v * w + outer?, scan: relu(v))."""
    nodes = [helper.make_node("Mul", ["v", "w"], ["vw"])]
    if outer:
        nodes.append(helper.make_node("Add", ["vw", outer], ["v_new"]))
    else:
        nodes.append(helper.make_node("Identity", ["vw"], ["v_new"]))
    nodes.append(helper.make_node("Relu", ["v"], ["r"]))
    if cond_node is not None:
        nodes += cond_node
    else:
        nodes.append(helper.make_node("Identity", ["cond"], ["cond_out"]))
    return helper.make_graph(nodes, "body", [vi("i", (), TensorProto.INT64), vi("cond", (), TensorProto.BOOL),
                                             vi("v", (2,))],
                             [vi("cond_out", (), TensorProto.BOOL), vi("v_new", (2,)), vi("r", (2,))])


def test_loop_constant_trip_count(tmp_path):
    rng = np.random.default_rng(6)
    node = helper.make_node("Loop", ["M", "c", "v0"], ["v_final", "rs"], body=loop_body(outer="x"))
    path = save(tmp_path / "loop.onnx", [node], [vi("v0", (2,)), vi("x", (2,))], [vi("v_final", None),
                vi("rs", None)], {"M": np.int64(4), "c": np.bool_(True), "w": np.float32([0.5, -1.2])})
    g = compare(path, {"v0": rand(rng, 2), "x": rand(rng, 2)})
    assert "concat" in g.op_histogram()


def test_loop_condition_from_counter(tmp_path):
    """No trip count: cond = (i + 1) < 3 folds to a constant each iteration."""
    rng = np.random.default_rng(7)
    cond = [helper.make_node("Add", ["i", "one"], ["i1"]), helper.make_node("Less", ["i1", "three"], ["cond_out"])]
    node = helper.make_node("Loop", ["", "c", "v0"], ["v_final", "rs"], body=loop_body(cond))
    path = save(tmp_path / "loop.onnx", [node], [vi("v0", (2,))], [vi("v_final", None), vi("rs", None)],
                {"c": np.bool_(True), "w": np.float32([0.5, -1.2]), "one": np.int64(1), "three": np.int64(3)})
    got, _ = ours(path, {"v0": rand(rng, 2)})
    assert got["rs"].shape == (3, 2)
    compare(path, {"v0": rand(rng, 2)})


def test_loop_no_iteration(tmp_path):
    """M = 0: the carried values pass through; the scan output is empty, shaped as the body declares."""
    rng = np.random.default_rng(11)
    node = helper.make_node("Loop", ["M", "c", "v0"], ["v_final", "rs"], body=loop_body(outer="x"))
    path = save(tmp_path / "loop0.onnx", [node, helper.make_node("Tanh", ["v_final"], ["y"])],
                [vi("v0", (2,)), vi("x", (2,))], [vi("y", None)],
                {"M": np.int64(0), "c": np.bool_(True), "w": np.float32([0.5, -1.2])})
    compare(path, {"v0": rand(rng, 2), "x": rand(rng, 2)})


def test_loop_runtime_condition_fails(tmp_path):
    """cond computed from a runtime value: the trip count is not static."""
    body = helper.make_graph([helper.make_node("Mul", ["v", "w"], ["v_new"]),
                              helper.make_node("Less", ["v_new", "lim"], ["cond_out"])], "body",
                             [vi("i", (), TensorProto.INT64), vi("cond", (), TensorProto.BOOL), vi("v", ())],
                             [vi("cond_out", (), TensorProto.BOOL), vi("v_new", ())])
    node = helper.make_node("Loop", ["M", "c", "v0"], ["v_final"], body=body)
    path = save(tmp_path / "loop.onnx", [node], [vi("v0", ())], [vi("v_final", None)],
                {"M": np.int64(5), "c": np.bool_(True), "w": np.float32(2.0), "lim": np.float32(10.0)})
    ort_run(path, {"v0": np.array(1.0, np.float32)})  # a valid model
    with pytest.raises(OnnxImportError, match="condition depends on runtime values"):
        load(path).trace()


def test_loop_runtime_trip_count_fails(tmp_path):
    node = helper.make_node("Loop", ["M", "c", "v0"], ["v_final", "rs"], body=loop_body())
    path = save(tmp_path / "loop.onnx", [node], [vi("v0", (2,)), vi("M", (), TensorProto.INT64)],
                [vi("v_final", None), vi("rs", None)], {"c": np.bool_(True), "w": np.float32([1.0, 1.0])})
    with pytest.raises(OnnxImportError, match="trip count M is computed at runtime"):
        load(path).trace()


def test_loop_unbounded_fails(tmp_path):
    """cond stays true and there is no M: refused after MAX_ITERATIONS (the body passes cond through)."""
    body = helper.make_graph([helper.make_node("Add", ["v", "x"], ["v_new"])], "body",
                             [vi("i", (), TensorProto.INT64), vi("cond", (), TensorProto.BOOL), vi("v", (2,))],
                             [vi("cond", (), TensorProto.BOOL), vi("v_new", (2,))])
    node = helper.make_node("Loop", ["", "c", "v0"], ["v_final"], body=body)
    path = save(tmp_path / "loop.onnx", [node], [vi("v0", (2,)), vi("x", (2,))], [vi("v_final", None)],
                {"c": np.bool_(True)})
    with pytest.raises(OnnxImportError, match="still running after 10000 iterations"):
        load(path).trace()


# ---- If ------------------------------------------------------------------------------------------

def branch(name, op, out="out"):
    """A branch reading the outer x: op(x) (+ an initializer of its own)."""
    k = numpy_helper.from_array(np.float32(1.5 if op == "Tanh" else -0.5), f"{name}_k")
    return helper.make_graph([helper.make_node(op, ["x"], [f"{name}_t"]),
                              helper.make_node("Mul", [f"{name}_t", f"{name}_k"], [out])],
                             name, [], [vi(out, None)], [k])


def test_if_constant_condition_inlines(tmp_path):
    rng = np.random.default_rng(8)
    for cond, want_op in ((True, "tanh"), (False, "sigmoid")):
        node = helper.make_node("If", ["c"], ["y"], then_branch=branch("then", "Tanh", "a"),
                                else_branch=branch("else", "Sigmoid", "b"))
        path = save(tmp_path / f"if{cond}.onnx", [node], [vi("x", (3,))], [vi("y", None)], {"c": np.bool_(cond)})
        g = compare(path, {"x": rand(rng, 3)})
        hist = g.op_histogram()
        assert want_op in hist and "select" not in hist and len({"tanh", "sigmoid"} & set(hist)) == 1


def test_if_runtime_condition_selects(tmp_path):
    rng = np.random.default_rng(9)
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch("then", "Tanh", "a"),
                            else_branch=branch("else", "Sigmoid", "b"))
    path = save(tmp_path / "if.onnx", [node], [vi("x", (3,)), vi("c", (), TensorProto.BOOL)], [vi("y", None)])
    for c in (True, False):
        g = compare(path, {"x": rand(rng, 3), "c": np.array(c)})
    assert "select" in g.op_histogram()


def test_if_runtime_condition_shapes_differ_fails(tmp_path):
    then_g = helper.make_graph([helper.make_node("Identity", ["x"], ["a"])], "then", [], [vi("a", None)])
    else_g = helper.make_graph([helper.make_node("Reshape", ["x", "shp"], ["b"])], "else", [], [vi("b", None)],
                               [numpy_helper.from_array(np.int64([3, 1]), "shp")])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)
    path = save(tmp_path / "if.onnx", [node], [vi("x", (3,)), vi("c", (), TensorProto.BOOL)], [vi("y", None)])
    with pytest.raises(OnnxImportError, match="different shapes or dtypes"):
        load(path).trace()


def test_if_inside_loop(tmp_path):
    """An If on the loop counter (folds each iteration) inside a Loop body: a different branch per step."""
    rng = np.random.default_rng(10)
    then_g = helper.make_graph([helper.make_node("Tanh", ["v"], ["ta"])], "then", [], [vi("ta", None)])
    else_g = helper.make_graph([helper.make_node("Mul", ["v", "w"], ["tb"])], "else", [], [vi("tb", None)])
    body = helper.make_graph(
        [helper.make_node("Less", ["i", "two"], ["early"]),
         helper.make_node("If", ["early"], ["v_new"], then_branch=then_g, else_branch=else_g),
         helper.make_node("Identity", ["cond"], ["cond_out"])],
        "body", [vi("i", (), TensorProto.INT64), vi("cond", (), TensorProto.BOOL), vi("v", (2,))],
        [vi("cond_out", (), TensorProto.BOOL), vi("v_new", (2,))])
    node = helper.make_node("Loop", ["M", "", "v0"], ["v_final"], body=body)
    path = save(tmp_path / "loopif.onnx", [node], [vi("v0", (2,))], [vi("v_final", None)],
                {"M": np.int64(4), "two": np.int64(2), "w": np.float32([0.5, 2.0])})
    g = compare(path, {"v0": rand(rng, 2)})
    assert g.op_histogram().get("tanh") == 2 and "select" not in g.op_histogram()


def test_converters_registered():
    for op in ("LSTM", "GRU", "RNN", "Scan", "Loop", "If"):
        assert op in CONVERTERS
