"""One recurrent layer as each implementation that `fastrnn bench` and `fastrnn validate` compare.

- fastrnn itself through the functional API, on any backend;
- PyTorch's ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` holding the same weights;
- ONNX Runtime running a one-node ONNX model (RNN, LSTM or GRU operator) built in memory.

All of them compute the same function of the same arrays. PyTorch stores the gates in fastrnn's
order; ONNX does not (LSTM i, o, f, c; GRU z, r, h), so ``onnx_model`` reorders the gate blocks
of the same weights. torch and onnxruntime are imported only when asked for.
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np

from .. import api
from ..cells import Cell

FORWARD = {"rnn": api.rnn_forward, "lstm": api.lstm_forward, "gru": api.gru_forward}
BACKWARD = {"rnn": api.rnn_backward, "lstm": api.lstm_backward, "gru": api.gru_backward}
GRAD_NAMES = ("dx", "dW_ih", "dW_hh", "db_ih", "db_hh", "dh0", "dc0",
              "dP", "dW_hr", "dg_ih", "dg_hh", "dg_c", "db_c")
# The functional API's argument of each gradient; a variant parameter's argument is its name in
# Variant.param_shapes, except the peepholes: P there, ``peepholes`` in the API.
PARAM_OF_GRAD = {"dx": "x", "dW_ih": "W_ih", "dW_hh": "W_hh", "db_ih": "b_ih", "db_hh": "b_hh",
                 "dh0": "h0", "dc0": "c0", "dP": "peepholes", "dW_hr": "W_hr", "dg_ih": "g_ih",
                 "dg_hh": "g_hh", "dg_c": "g_c", "db_c": "b_c"}

# Where ONNX keeps each of fastrnn's gate blocks: ONNX block k is fastrnn block ONNX_GATES[k].
ONNX_GATES = {"rnn": (0,), "lstm": (0, 3, 1, 2), "gru": (1, 0, 2)}
ONNX_OPSET = 17
ONNX_IR_VERSION = 8  # the IR version that goes with opset 17, read by any recent onnxruntime


class Unsupported(Exception):
    """This implementation cannot run this case; the message says why."""


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def make_params(cell: Cell, T, B, I, H, dtype=np.float32, seed=0, bias=True, states=True,
                scale=None):
    """Random inputs for one direction: x (T, B, I) standard normal, weights and biases uniform
    in +-``scale`` (default 1/sqrt(H), PyTorch's initialisation), h0 (B, H_out) and c0 (B, H) or
    None, where H_out is the cell's proj_size or H. A dict keyed like the functional API's
    arguments. ``seed`` may be a numpy Generator, which then draws them.

    A variant cell's parameters come after the plain ones, which they leave as they are (but
    for a projection, which narrows W_hh and h0 and so draws all after them anew, and layer
    norm, whose W_ih and W_hh are drawn at unit scale: see below): W_hr
    and the peepholes uniform in +-scale; the layer-norm gains g_ih, g_hh, g_c uniform in
    [0.5, 1.5] and b_c in +-scale, not the 1 and 0 they start at, so that the gains and b_c
    matter; and with zoneout a training mask (T, B, H_out) of 0 and 1 (cells.Variant)."""
    rng = np.random.default_rng(seed)
    v = cell.variant
    shapes = v.param_shapes(cell, I, H)
    H_out = v.hidden_size(H)
    k = 1 / np.sqrt(H) if scale is None else scale
    # Layer norm makes the cell invariant to the scale of W_ih and W_hh but not their
    # gradients, which grow as 1 / scale: at 1/sqrt(H) they reach tens, and float32's error
    # (a few ulps of the largest) exceeds the tolerance of their smaller entries. So a
    # layer-normalised cell draws them at unit scale, the same function with gradients of the
    # size the plain cells have.
    k_w = 1.0 if v.layer_norm and scale is None else k
    p = {
        "x": rng.standard_normal((T, B, I)),
        "W_ih": rng.uniform(-k_w, k_w, shapes["W_ih"]),
        "W_hh": rng.uniform(-k_w, k_w, shapes["W_hh"]),
        "b_ih": rng.uniform(-k, k, shapes["b_ih"]) if bias else None,
        "b_hh": rng.uniform(-k, k, shapes["b_hh"]) if bias else None,
    }
    for name, width in zip(cell.named("{}0"), (H_out, H)):
        p[name] = rng.standard_normal((B, width)) * 0.5 if states else None
    for name in ("W_hr", "P", "g_ih", "g_hh", "g_c", "b_c"):
        if name in shapes:
            low, high = (0.5, 1.5) if name.startswith("g_") else (-k, k)
            p[PARAM_OF_GRAD["d" + name]] = rng.uniform(low, high, shapes[name])
    if v.zoneout:
        p["zoneout_mask"] = v.zoneout_mask((T, B, H_out), np.float64, training=True, rng=rng)
    return {n: None if a is None else a.astype(dtype) for n, a in p.items()}


def make_cotangents(cell: Cell, T, B, H, dtype=np.float64, seed=1) -> dict:
    """Random standard normal cotangents for one direction: dy (T, B, H_out), dh_n (B, H_out)
    and (LSTM) dc_n (B, H), keyed like the functional API's backward arguments; H_out is the
    cell's proj_size or H."""
    rng = np.random.default_rng(seed)
    H_out = cell.variant.hidden_size(H)
    g = {"dy": rng.standard_normal((T, B, H_out))}
    for name, width in zip(cell.named("d{}_n"), (H_out, H)):
        g[name] = rng.standard_normal((B, width))
    return {n: a.astype(dtype) for n, a in g.items()}


# ----------------------------------------------------------------------------------------------
# fastrnn


def variant_options(cell: Cell) -> dict:
    """The switches of ``cell.variant`` that the functional API takes as numbers: clip, zoneout
    (its arrays, W_hr, peepholes, the gains and the zoneout mask, are in ``make_params``)."""
    v = cell.variant
    return {name: value for name, value in (("clip", v.clip), ("zoneout", v.zoneout))
            if name in v.switches}


def not_run_reason(backend, cell: Cell):
    """Why the fastrnn ``backend`` (a Backend) does not run ``cell``: the variant switches that it
    does not declare (``Backend.variant_switches``); None when it runs it."""
    missing = backend.unsupported(cell)
    return f"the backend does not run {', '.join(missing)}" if missing else None


def fastrnn_forward(cell: Cell, p: dict, **options):
    """The functional API's forward for ``cell`` on the arguments in ``p`` (as ``make_params``
    gives them), with ``options`` such as training, backend, lengths, reverse: returns its result
    tuple, ctx last. In inference (training=False) zoneout takes its evaluation form, M = 1 - p:
    the training mask in ``p`` is left out."""
    if not options.get("training", True):
        p = {name: a for name, a in p.items() if name != "zoneout_mask"}
    return FORWARD[cell.kind](**p, **cell.options, **variant_options(cell), **options)


def fastrnn_backward(cell: Cell, ctx, cotangents: dict):
    """The functional API's backward; ``cotangents`` holds dy, dh_n and (LSTM) dc_n."""
    return BACKWARD[cell.kind](ctx, **cotangents)


def outputs(cell: Cell, result) -> dict:
    """A forward's result by name: y, h_n and (LSTM) c_n."""
    return dict(zip(("y", *cell.named("{}_n")), result))


def gradients(grads) -> dict:
    """The gradients a backward returned, by name (``GRAD_NAMES``), leaving out the Nones."""
    return {n: getattr(grads, n) for n in GRAD_NAMES if getattr(grads, n) is not None}


def fastrnn_runner(backend_name: str, cell: Cell, p: dict, mode: str):
    """A call running one forward (inference) or forward + backward with dy = ones (training)
    on fastrnn backend ``backend_name``; returns (call, sync, setup seconds). call() returns y."""
    from .. import dispatch

    backend = dispatch.get_backend(backend_name)  # resolved once: every call passes it as is
    reason = not_run_reason(backend, cell)
    if reason:
        raise Unsupported(reason)
    xp = backend.xp
    sync = None
    if backend.library != "numpy":
        p = {n: None if a is None else xp.asarray(a) for n, a in p.items()}
        sync = backend.device.synchronize
    if mode == "inference":
        def call():
            return fastrnn_forward(cell, p, training=False, backend=backend)[0]
    else:
        # dy (T, B, H_out): W_hh has H_out columns, proj_size or H
        ones = xp.ones((p["x"].shape[0], p["x"].shape[1], p["W_hh"].shape[1]), p["x"].dtype)

        def call():
            out = fastrnn_forward(cell, p, training=True, backend=backend)
            fastrnn_backward(cell, out[-1], {"dy": ones})
            return out[0]
    return call, sync, 0.0


# ----------------------------------------------------------------------------------------------
# PyTorch


def torch_module(cell: Cell, p: dict):
    """torch.nn.RNN / LSTM / GRU (one layer, time-major) holding the weights in ``p``; the LSTM
    with its projection (``proj_size``, weight_hr_l0) where the cell has one."""
    if not installed("torch"):
        raise Unsupported("torch is not installed (pip install 'fastrnn[bench]')")
    if cell.kind == "gru" and not cell.linear_before_reset:
        raise Unsupported("torch.nn.GRU has only the linear_before_reset=True form")
    lacking = [s for s in cell.variant.switches if s != "proj_size"]
    if lacking:
        raise Unsupported(f"torch.nn.{cell.kind.upper()} has no {', '.join(lacking)}")
    import torch

    I, H = p["W_ih"].shape[1], p["W_ih"].shape[0] // cell.gates
    dtype = torch.float64 if p["x"].dtype == np.float64 else torch.float32
    kw = dict(input_size=I, hidden_size=H, bias=p["b_ih"] is not None, dtype=dtype)
    if cell.variant.proj_size:
        kw["proj_size"] = cell.variant.proj_size
    if cell.kind == "rnn":
        module = torch.nn.RNN(nonlinearity=cell.nonlinearity, **kw)
    else:
        module = getattr(torch.nn, cell.kind.upper())(**kw)
    with torch.no_grad():
        for ours, theirs in (("W_ih", "weight_ih_l0"), ("W_hh", "weight_hh_l0"),
                             ("b_ih", "bias_ih_l0"), ("b_hh", "bias_hh_l0"),
                             ("W_hr", "weight_hr_l0")):
            if p.get(ours) is not None:
                getattr(module, theirs).copy_(torch.from_numpy(p[ours]))
    return module


def torch_runner(cell: Cell, p: dict, mode: str, threads=None, device="cpu"):
    """PyTorch's call on ``device`` ("cpu", or "cuda": cuDNN): no_grad forward, or forward +
    output.sum().backward() with gradients for the input, the weights and the initial states.
    Returns (call, sync, setup seconds); sync waits for the GPU. ``threads`` is ignored: torch's
    thread count is process-wide (``machine.thread_settings``)."""
    if installed("torch"):
        import torch  # outside the setup time: importing torch is not building the module
    start = time.perf_counter()
    module = torch_module(cell, p).to(device)

    training = mode == "training"
    x = torch.from_numpy(p["x"]).to(device).requires_grad_(training)
    states = [torch.from_numpy(p[n][None]).to(device).requires_grad_(training)
              for n in cell.named("{}0")]
    hx = cell.as_hx(states)
    leaves = [x, *states, *module.parameters()]
    if not training:
        def call():
            with torch.no_grad():
                return module(x, hx)[0]
    else:
        def call():
            for t in leaves:  # fresh gradients each call, as fastrnn returns fresh arrays
                t.grad = None
            y = module(x, hx)[0]
            y.sum().backward()
            return y
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else None
    return call, sync, time.perf_counter() - start


# ----------------------------------------------------------------------------------------------
# ONNX Runtime


def onnx_model(cell: Cell, p: dict, reverse: bool = False):
    """A one-node ONNX model computing ``cell`` with the weights in ``p`` as initializers.

    Graph inputs X (T, B, I), initial_h (1, B, H) and, for the LSTM, initial_c (1, B, H);
    outputs Y (T, 1, B, H), Y_h (1, B, H) and, for the LSTM, Y_c (1, B, H). Of the variants,
    ONNX has the clip (attribute ``clip``) and the LSTM's peepholes (input P, rows in ONNX's
    order p_i, p_o, p_f).
    """
    if not (installed("onnx") and installed("onnxruntime")):
        raise Unsupported("onnx and onnxruntime are not installed (pip install 'fastrnn[bench]')")
    lacking = [s for s in cell.variant.switches if s not in ("clip", "peepholes")]
    if lacking:
        raise Unsupported(f"ONNX's {cell.kind.upper()} operator has no {', '.join(lacking)}")
    import onnx
    from onnx import helper, numpy_helper

    x = p["x"]
    H = p["W_ih"].shape[0] // cell.gates
    order = ONNX_GATES[cell.kind]

    def reorder(a):
        return np.concatenate([a[k * H:(k + 1) * H] for k in order])[None]

    elem = helper.np_dtype_to_tensor_dtype(x.dtype)
    initializers = [numpy_helper.from_array(reorder(p["W_ih"]), "W"),
                    numpy_helper.from_array(reorder(p["W_hh"]), "R")]
    if p["b_ih"] is not None:
        b = np.concatenate([reorder(p["b_ih"]), reorder(p["b_hh"])], axis=1)
        initializers.append(numpy_helper.from_array(b, "B"))
    peepholes = ["P"] if cell.variant.peepholes else []
    if peepholes:
        initializers.append(numpy_helper.from_array(
            p["peepholes"][[0, 2, 1]].reshape(1, 3 * H), "P"))
    state_names = list(cell.named("initial_{}"))
    out_names = ["Y", *cell.named("Y_{}")]
    attrs = {"hidden_size": H, "direction": "reverse" if reverse else "forward"}
    if cell.kind == "rnn":
        attrs["activations"] = ["Tanh" if cell.nonlinearity == "tanh" else "Relu"]
    if cell.kind == "gru":
        attrs["linear_before_reset"] = int(cell.linear_before_reset)
    if cell.variant.clip is not None:
        attrs["clip"] = float(cell.variant.clip)
    node = helper.make_node(
        cell.kind.upper(), ["X", "W", "R", "B" if p["b_ih"] is not None else "", ""]
        + state_names + peepholes, out_names, **attrs)
    T, B, I = x.shape
    graph = helper.make_graph(
        [node], f"fastrnn_{cell.name}",
        [helper.make_tensor_value_info("X", elem, [T, B, I])]
        + [helper.make_tensor_value_info(n, elem, [1, B, H]) for n in state_names],
        [helper.make_tensor_value_info("Y", elem, [T, 1, B, H])]
        + [helper.make_tensor_value_info(n, elem, [1, B, H]) for n in out_names[1:]],
        initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = ONNX_IR_VERSION
    onnx.checker.check_model(model)
    return model


def ort_session(model, threads: int):
    """An onnxruntime CPU session with ``threads`` intra-op threads that do not spin between
    calls (spinning threads would steal the cores from the implementations timed next)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def ort_feeds(cell: Cell, p: dict) -> dict:
    B, H = p["x"].shape[1], p["W_ih"].shape[0] // cell.gates
    zeros = np.zeros((B, H), p["x"].dtype)
    feeds = {"X": p["x"]}
    for feed, state in zip(cell.named("initial_{}"), cell.named("{}0")):
        feeds[feed] = (zeros if p.get(state) is None else p[state])[None]
    return feeds


def ort_forward(cell: Cell, session, p: dict) -> dict:
    """Run the session on ``p``; returns y (T, B, H), h_n (B, H) and (LSTM) c_n (B, H)."""
    y, *states = session.run(None, ort_feeds(cell, p))
    return outputs(cell, (y[:, 0], *(s[0] for s in states)))


def ort_runner(cell: Cell, p: dict, mode: str, threads: int):
    """ONNX Runtime's inference call; returns (call, sync, setup seconds: model + session)."""
    if mode != "inference":
        raise Unsupported("ONNX Runtime runs inference only")
    start = time.perf_counter()
    session = ort_session(onnx_model(cell, p), threads)
    feeds = ort_feeds(cell, p)

    def call():
        return session.run(["Y"], feeds)[0][:, 0]
    return call, None, time.perf_counter() - start


def to_numpy(a) -> np.ndarray:
    """A host NumPy array from a NumPy, CuPy or torch array."""
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    if hasattr(a, "get"):
        return a.get()
    return np.asarray(a)
