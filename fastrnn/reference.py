"""The NumPy reference: plain, step by step, obviously right. Every kernel is checked against it.

It shares no math with the fast backends. Each cell, every variant included (``cells.Variant``:
projection, layer norm, peepholes, clip, zoneout; the default Variant() is the plain cell), is a
pair of functions on one time step: ``*_step`` computes the new state of the valid rows and keeps
a cache, ``*_step_back`` turns the gradient of the new state into gradients of x_t and the
previous state, adding the parameter gradients into ``grads``. What the variants share is written
once: the products W x (with or without layer norm, ``_project``), the clamp of a gate's input
(``_clamp``), and zoneout, which acts on h after any cell and so lives in the time loop.
``forward`` / ``backward`` own time: order, lengths (a step runs on the valid rows only, so
padding is never read; the others keep their state and output 0), zoneout. The equations are in
``cells.py``.

Parameters are a dict keyed as ``Variant.param_shapes`` (W_ih, W_hh, b_ih, b_hh, W_hr, g_ih,
g_hh, g_c, b_c, P); gradients a dict of the same names with a leading "d", plus dx, dh0, dc0.
``NumpyBackend`` runs it as the backend "numpy".
"""
from __future__ import annotations

import numpy as np
from scipy.special import expit as sigmoid

from .backends.base import Backend, DirectionGrads, step_times
from .cells import LN_EPS, Cell, Variant

# ----------------------------------------------------------------------------------------------
# Shared pieces


def _layer_norm(v):
    """(v_hat, inv_std): v normalised over each row (the whole row of gates), eps LN_EPS."""
    centred = v - v.mean(axis=1, keepdims=True)
    inv_std = 1 / np.sqrt((centred * centred).mean(axis=1, keepdims=True) + LN_EPS)
    return centred * inv_std, inv_std


def _layer_norm_back(d_hat, v_hat, inv_std):
    """Gradient of v from the gradient of v_hat = LN(v)."""
    return inv_std * (d_hat - d_hat.mean(axis=1, keepdims=True)
                      - v_hat * (d_hat * v_hat).mean(axis=1, keepdims=True))


def _project(inp, W, b, gain):
    """W inp + b, or with layer norm (``gain`` given) LN(W inp) * gain + b: (B, rows of W)."""
    pre = inp @ W.T
    norm = None
    if gain is not None:
        norm = _layer_norm(pre)
        pre = norm[0] * gain
    return (pre if b is None else pre + b), (inp, norm)


def _project_back(d_out, cache, W, gain):
    """(d_inp, dW, db, d_gain) of ``_project`` from the gradient of its output."""
    inp, norm = cache
    d_gain = None
    d_pre = d_out
    if norm is not None:
        v_hat, inv_std = norm
        d_gain = (d_out * v_hat).sum(axis=0)
        d_pre = _layer_norm_back(d_out * gain, v_hat, inv_std)
    return d_pre @ W, d_pre.T @ inp, d_out.sum(axis=0), d_gain


def _add_projection_grads(grads, side, parts, rows=slice(None)):
    """Add dW/db/d_gain of ``_project_back`` to grads["dW_<side>"][rows] etc.; a bias or gain
    the direction does not have has no entry and gets nothing."""
    _, dW, db, d_gain = parts
    grads[f"dW_{side}"][rows] += dW
    for name, part in ((f"db_{side}", db), (f"dg_{side}", d_gain)):
        if part is not None and name in grads:
            grads[name][rows] += part


def _clamp(a, clip):
    """(a clamped to [-clip, clip], its derivative mask or None when clip is None)."""
    if clip is None:
        return a, None
    return np.clip(a, -clip, clip), (np.abs(a) <= clip).astype(a.dtype)


def _unclamp(d, mask):
    """The gradient through ``_clamp``: zero where the input was outside the bounds."""
    return d if mask is None else d * mask


def _gate_blocks(a, k):
    """The k gate blocks (R, H) of a row of gates (R, k*H), in cell order."""
    H = a.shape[1] // k
    return [a[:, j * H:(j + 1) * H] for j in range(k)]


# ----------------------------------------------------------------------------------------------
# One step of each cell: x_t (R, I) and the states of the R valid rows.


def rnn_step(cell, v, p, x_t, state):
    (h,) = state
    gx, x_cache = _project(x_t, p["W_ih"], p["b_ih"], None)
    gh, h_cache = _project(h, p["W_hh"], p["b_hh"], None)
    a, mask = _clamp(gx + gh, v.clip)
    h_new = np.tanh(a) if cell.nonlinearity == "tanh" else np.maximum(a, 0)
    return (h_new,), (x_cache, h_cache, h_new, mask)


def rnn_step_back(cell, v, p, cache, d_state, grads):
    x_cache, h_cache, h_new, mask = cache
    (dh_new,) = d_state
    d_act = (1 - h_new * h_new) if cell.nonlinearity == "tanh" else (h_new > 0)
    d_a = _unclamp(dh_new * d_act, mask)
    x_parts = _project_back(d_a, x_cache, p["W_ih"], None)
    h_parts = _project_back(d_a, h_cache, p["W_hh"], None)
    _add_projection_grads(grads, "ih", x_parts)
    _add_projection_grads(grads, "hh", h_parts)
    return x_parts[0], (h_parts[0],)


def lstm_step(cell, v, p, x_t, state):
    h, c = state
    gx, x_cache = _project(x_t, p["W_ih"], p["b_ih"], p.get("g_ih"))
    gh, h_cache = _project(h, p["W_hh"], p["b_hh"], p.get("g_hh"))
    a_i, a_f, a_g, a_o = _gate_blocks(gx + gh, 4)
    peep = p.get("P")
    if peep is not None:
        a_i, a_f = a_i + peep[0] * c, a_f + peep[1] * c
    (a_i, m_i), (a_f, m_f), (a_g, m_g) = (_clamp(a, v.clip) for a in (a_i, a_f, a_g))
    i, f, g = sigmoid(a_i), sigmoid(a_f), np.tanh(a_g)
    c_new = f * c + i * g
    if peep is not None:
        a_o = a_o + peep[2] * c_new  # the output gate looks at the new cell state
    a_o, m_o = _clamp(a_o, v.clip)
    o = sigmoid(a_o)
    c_norm = None
    if v.layer_norm:
        c_norm = _layer_norm(c_new)
        tanh_c = np.tanh(c_norm[0] * p["g_c"] + p["b_c"])
    else:
        tanh_c = np.tanh(c_new)
    h_full = o * tanh_c
    h_new = h_full if v.proj_size == 0 else h_full @ p["W_hr"].T
    masks = (m_i, m_f, m_g, m_o)
    return (h_new, c_new), (x_cache, h_cache, c, i, f, g, o, c_new, masks, c_norm, tanh_c, h_full)


def lstm_step_back(cell, v, p, cache, d_state, grads):
    x_cache, h_cache, c, i, f, g, o, c_new, masks, c_norm, tanh_c, h_full = cache
    m_i, m_f, m_g, m_o = masks
    dh_new, dc_new = d_state
    if v.proj_size:
        grads["dW_hr"] += dh_new.T @ h_full
        dh_new = dh_new @ p["W_hr"]
    da_o = _unclamp(dh_new * tanh_c * o * (1 - o), m_o)
    d_tanh_in = dh_new * o * (1 - tanh_c * tanh_c)
    if c_norm is not None:
        c_hat, inv_std = c_norm
        grads["dg_c"] += (d_tanh_in * c_hat).sum(axis=0)
        grads["db_c"] += d_tanh_in.sum(axis=0)
        dc = dc_new + _layer_norm_back(d_tanh_in * p["g_c"], c_hat, inv_std)
    else:
        dc = dc_new + d_tanh_in
    peep = p.get("P")
    if peep is not None:
        dc = dc + da_o * peep[2]
    da_i = _unclamp(dc * g * i * (1 - i), m_i)
    da_f = _unclamp(dc * c * f * (1 - f), m_f)
    da_g = _unclamp(dc * i * (1 - g * g), m_g)
    dc_prev = dc * f
    if peep is not None:
        dc_prev = dc_prev + da_i * peep[0] + da_f * peep[1]
        grads["dP"] += np.stack([(da_i * c).sum(axis=0), (da_f * c).sum(axis=0),
                                 (da_o * c_new).sum(axis=0)])
    d_a = np.concatenate([da_i, da_f, da_g, da_o], axis=1)
    x_parts = _project_back(d_a, x_cache, p["W_ih"], p.get("g_ih"))
    h_parts = _project_back(d_a, h_cache, p["W_hh"], p.get("g_hh"))
    _add_projection_grads(grads, "ih", x_parts)
    _add_projection_grads(grads, "hh", h_parts)
    return x_parts[0], (h_parts[0], dc_prev)


def gru_step(cell, v, p, x_t, state):
    (h,) = state
    H = h.shape[1]
    W_hh, b_hh = p["W_hh"], p["b_hh"]
    gx, x_cache = _project(x_t, p["W_ih"], p["b_ih"], p.get("g_ih"))
    gx_r, gx_z, gx_n = _gate_blocks(gx, 3)
    if cell.linear_before_reset:
        gh, h_cache = _project(h, W_hh, b_hh, p.get("g_hh"))
        gh_r, gh_z, hn = _gate_blocks(gh, 3)
    else:  # textbook: the candidate's recurrent product sees r * h (no layer norm here)
        gh, h_cache = _project(h, W_hh[:2 * H], None if b_hh is None else b_hh[:2 * H], None)
        gh_r, gh_z = _gate_blocks(gh, 2)
    (a_r, m_r), (a_z, m_z) = _clamp(gx_r + gh_r, v.clip), _clamp(gx_z + gh_z, v.clip)
    r, z = sigmoid(a_r), sigmoid(a_z)
    if cell.linear_before_reset:
        hn_cache = None
        a_n = gx_n + r * hn
    else:
        hn, hn_cache = _project(r * h, W_hh[2 * H:], None if b_hh is None else b_hh[2 * H:], None)
        a_n = gx_n + hn
    a_n, m_n = _clamp(a_n, v.clip)
    n = np.tanh(a_n)
    h_new = (1 - z) * n + z * h
    return (h_new,), (x_cache, h_cache, hn_cache, h, r, z, n, hn, (m_r, m_z, m_n))


def gru_step_back(cell, v, p, cache, d_state, grads):
    x_cache, h_cache, hn_cache, h, r, z, n, hn, (m_r, m_z, m_n) = cache
    H = h.shape[1]
    W_hh = p["W_hh"]
    (dh_new,) = d_state
    dn_pre = _unclamp(dh_new * (1 - z) * (1 - n * n), m_n)
    dz_pre = _unclamp(dh_new * (h - n) * z * (1 - z), m_z)
    dh = dh_new * z
    if cell.linear_before_reset:
        dr_pre = _unclamp(dn_pre * hn * r * (1 - r), m_r)
        d_gh = np.concatenate([dr_pre, dz_pre, dn_pre * r], axis=1)
        h_parts = _project_back(d_gh, h_cache, W_hh, p.get("g_hh"))
        _add_projection_grads(grads, "hh", h_parts)
        dh = dh + h_parts[0]
    else:
        rh_parts = _project_back(dn_pre, hn_cache, W_hh[2 * H:], None)
        _add_projection_grads(grads, "hh", rh_parts, slice(2 * H, 3 * H))
        d_rh = rh_parts[0]
        dr_pre = _unclamp(d_rh * h * r * (1 - r), m_r)
        h_parts = _project_back(np.concatenate([dr_pre, dz_pre], axis=1), h_cache,
                                W_hh[:2 * H], None)
        _add_projection_grads(grads, "hh", h_parts, slice(0, 2 * H))
        dh = dh + d_rh * r + h_parts[0]
    d_gx = np.concatenate([dr_pre, dz_pre, dn_pre], axis=1)
    x_parts = _project_back(d_gx, x_cache, p["W_ih"], p.get("g_ih"))
    _add_projection_grads(grads, "ih", x_parts)
    return x_parts[0], (dh,)


STEPS = {
    "rnn": (rnn_step, rnn_step_back),
    "lstm": (lstm_step, lstm_step_back),
    "gru": (gru_step, gru_step_back),
}


# ----------------------------------------------------------------------------------------------
# Checks


def _check_array(name, a, shape):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of shape {shape}, got {type(a).__name__}")
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")


def check_inputs(cell, variant, x, params, h0, c0, lengths, zoneout_mask):
    """Raise a TypeError/ValueError that names the argument when an input does not fit."""
    variant.check(cell)
    if not isinstance(x, np.ndarray) or x.ndim != 3:
        raise ValueError("x must be a numpy array of shape (T, B, I), "
                         f"got {getattr(x, 'shape', type(x).__name__)!r}")
    T, B, I = x.shape
    W_ih = params.get("W_ih")
    if not isinstance(W_ih, np.ndarray) or W_ih.ndim != 2 or W_ih.shape[0] % cell.gates:
        raise ValueError(
            f"params['W_ih'] must be a numpy array ({cell.gates}*H, I) for {cell.name}")
    H = W_ih.shape[0] // cell.gates
    if variant.proj_size >= H:  # as torch.nn.LSTM
        raise ValueError(f"proj_size must be smaller than the hidden size H={H}, "
                         f"got {variant.proj_size}")
    shapes = variant.param_shapes(cell, I, H)
    missing = sorted(set(shapes) - set(params))
    extra = sorted(set(params) - set(shapes))
    if missing or extra:
        raise ValueError(f"params for {cell.name} with {variant} need {sorted(shapes)}; "
                         f"missing {missing}, unexpected {extra}")
    for name, shape in shapes.items():
        if params[name] is None and name in ("b_ih", "b_hh"):
            continue  # a cell may have no biases, as in PyTorch's bias=False
        _check_array(f"params[{name!r}]", params[name], shape)
    P = variant.hidden_size(H)
    if h0 is not None:
        _check_array("h0", h0, (B, P))
    if c0 is not None:
        if not cell.has_cell_state:
            raise ValueError(f"c0 is an LSTM state; {cell.name} has none")
        _check_array("c0", c0, (B, H))
    if lengths is not None:
        _check_array("lengths", lengths, (B,))
        if lengths.min() < 1 or lengths.max() > T:
            raise ValueError(
                f"lengths must lie in [1, T={T}], got {lengths.min()}..{lengths.max()}")
    if variant.zoneout and zoneout_mask is None:
        raise ValueError("zoneout needs zoneout_mask, (T, B, P or H): see Variant.zoneout_mask")
    if zoneout_mask is not None:
        if not variant.zoneout:
            raise ValueError("zoneout_mask given but the variant has zoneout=0")
        _check_array("zoneout_mask", zoneout_mask, (T, B, P))
    return T, B, H, P


# ----------------------------------------------------------------------------------------------
# Time: order, lengths (the step runs on the valid rows only; the others keep their state and
# output 0) and zoneout (h' = h + M (h_new - h), after any cell).


def forward(cell: Cell, variant: Variant, x, params, h0=None, c0=None, *, lengths=None,
            reverse=False, zoneout_mask=None, training=True):
    """One direction of ``cell`` with ``variant``: (y (T, B, P), h_n (B, P), c_n (B, H) or None,
    saved or None). P is proj_size where the LSTM projects, else H. ``zoneout_mask`` is M above,
    (T, B, P), required exactly when variant.zoneout > 0."""
    T, B, H, P = check_inputs(cell, variant, x, params, h0, c0, lengths, zoneout_mask)
    step = STEPS[cell.kind][0]
    state = [np.zeros((B, P), x.dtype) if h0 is None else h0.copy()]
    if cell.has_cell_state:
        state.append(np.zeros((B, H), x.dtype) if c0 is None else c0.copy())
    y = np.zeros((T, B, P), x.dtype)
    caches = {}
    for t in step_times(T, reverse):
        rows = np.arange(B) if lengths is None else np.flatnonzero(t < lengths)
        old = [s[rows] for s in state]
        new, cache = step(cell, variant, params, x[t, rows], old)
        new = list(new)
        if zoneout_mask is not None:
            new[0] = old[0] + zoneout_mask[t, rows] * (new[0] - old[0])
        for s, n in zip(state, new):
            s[rows] = n
        y[t, rows] = new[0]
        if training:
            caches[t] = (rows, cache)
    saved = (cell, variant, params, caches, reverse, zoneout_mask, x.shape) if training else None
    return y, state[0], state[1] if cell.has_cell_state else None, saved


def backward(saved, dy=None, dh_n=None, dc_n=None) -> dict:
    """Gradients of a training ``forward``: dx, dh0, dc0 (LSTM) and "d" + each parameter name
    (None for a bias the direction does not have). Absent cotangents count as zeros."""
    cell, variant, params, caches, reverse, zoneout_mask, (T, B, I) = saved
    step_back = STEPS[cell.kind][1]
    grads = {f"d{name}": np.zeros_like(a) for name, a in params.items() if a is not None}
    H = params["W_ih"].shape[0] // cell.gates
    P = variant.hidden_size(H)
    dtype = params["W_ih"].dtype
    dy = np.zeros((T, B, P), dtype) if dy is None else dy
    d_state = [np.zeros((B, P), dtype) if dh_n is None else dh_n.copy()]
    if cell.has_cell_state:
        d_state.append(np.zeros((B, H), dtype) if dc_n is None else dc_n.copy())
    dx = np.zeros((T, B, I), dtype)
    for t in reversed(step_times(T, reverse)):
        rows, cache = caches[t]
        d_new = [d[rows] for d in d_state]
        d_new[0] = d_new[0] + dy[t, rows]
        d_kept = None
        if zoneout_mask is not None:  # h' = (1 - M) h + M h_new
            d_kept = (1 - zoneout_mask[t, rows]) * d_new[0]
            d_new[0] = zoneout_mask[t, rows] * d_new[0]
        dx[t, rows], d_prev = step_back(cell, variant, params, cache, d_new, grads)
        d_prev = list(d_prev)
        if d_kept is not None:
            d_prev[0] = d_prev[0] + d_kept
        for d, dp in zip(d_state, d_prev):
            d[rows] = dp
    grads.update(dx=dx, dh0=d_state[0], dc0=d_state[1] if cell.has_cell_state else None)
    for bias in ("b_ih", "b_hh"):
        grads.setdefault(f"d{bias}", None)
    return grads


def initial_params(cell: Cell, variant: Variant, I: int, H: int, rng, dtype=np.float64,
                   bias=True, scale=None) -> dict:
    """Parameters for ``forward``: weights (and biases) uniform in +-scale (default 1/sqrt(H),
    PyTorch's initialisation), layer-norm gains at 1 and b_c at 0 (as they start), peepholes
    uniform in +-scale. ``rng`` a numpy Generator."""
    k = 1 / np.sqrt(H) if scale is None else scale
    params = {}
    for name, shape in variant.param_shapes(cell, I, H).items():
        if name.startswith("g_"):
            params[name] = np.ones(shape, dtype)
        elif name == "b_c":
            params[name] = np.zeros(shape, dtype)
        elif name in ("b_ih", "b_hh") and not bias:
            params[name] = None
        else:
            params[name] = rng.uniform(-k, k, shape).astype(dtype)
    return params


# ----------------------------------------------------------------------------------------------
# The reference as a backend ("numpy"): what the dispatch runs for backend="numpy"


def _run(cell, x, d, lengths, training):
    """One direction of a layer through ``forward``: (y, (h_n, c_n), saved)."""
    params = dict(W_ih=d.W_ih, W_hh=d.W_hh, b_ih=d.b_ih, b_hh=d.b_hh, **d.variant_params)
    y, h_n, c_n, saved = forward(
        cell, cell.variant, x, params, d.h0, d.c0, lengths=lengths, reverse=d.reverse,
        zoneout_mask=d.zoneout_mask, training=training)
    return y, (h_n, c_n), saved


def _run_back(saved, dy, d_state_n):
    """Backward of ``_run``: (dx, DirectionGrads)."""
    g = backward(saved, dy, *d_state_n)
    names = ("dW_ih", "dW_hh", "db_ih", "db_hh", "dh0", "dc0")
    extra = {name: value for name, value in g.items()
             if name not in names and name != "dx" and value is not None}
    return g["dx"], DirectionGrads(*(g.get(name) for name in names), **extra)


class NumpyBackend(Backend):
    """The reference as a backend: each direction run step by step, independently."""

    name = "numpy"
    xp = np
    variant_switches = frozenset(Variant.__dataclass_fields__)

    def forward(self, cell, x, dirs, lengths, training):
        ys, hs, cs, saved = [], [], [], []
        for d in dirs:
            y, state, s = _run(cell, x, d, lengths, training)
            ys.append(y)
            hs.append(state[0])
            cs.append(state[1] if cell.has_cell_state else None)
            saved.append(s)
        # One direction's y is returned as it is: no second output-sized array.
        return (ys[0] if len(ys) == 1 else np.concatenate(ys, axis=2), np.stack(hs),
                np.stack(cs) if cell.has_cell_state else None,
                saved if training else None)

    def backward(self, cell, saved, dy, dh_n, dc_n):
        H = dh_n.shape[2]
        dx = 0
        grads = []
        for k, s in enumerate(saved):
            d_state_n = (dh_n[k], dc_n[k]) if cell.has_cell_state else (dh_n[k],)
            dx_k, g = _run_back(s, dy[..., k * H:(k + 1) * H], d_state_n)
            saved[k] = None
            dx = dx + dx_k
            grads.append(g)
        return dx, grads
