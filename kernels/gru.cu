// GRU, one time step t per launch, one thread per (b, j); equations in fastrnn/cells.py, gates
// r, z, n stacked in that order (PyTorch's):
//   r = sigmoid(gx_r + gh_r), z = sigmoid(gx_z + gh_z), h' = (1 - z) n + z h
//   linear_before_reset=True (gru_*):           n = tanh(gx_n + r (W_hn h + b_hn))
//   linear_before_reset=False (gru_textbook_*): n = tanh(gx_n + W_hn (r h) + b_hn)
// The textbook form needs r before its W_hn GEMM, so each of its steps is two kernels around a
// second GEMM, forward and backward.
//
// The forward keeps the activated gates r, z, n and the states hs, plus hn = W_hn h + b_hn for
// linear_before_reset=True. Shapes as in rnn.cu: "[B, ld]" arguments may be views.
//
// Clip (cells.Variant.clip, a compile-time switch) clamps the whole input of each of r, z, n's
// activations to [-clip, clip] (n's after r multiplies its recurrent part, or after W_hn (r h));
// the clamp's flags are kept in `inside` ([B, 3H] uint8 per step) for backward. Zoneout acts
// on the new h (common.cuh, leave_step and gradient_leaving).

#include "common.cuh"

using namespace fastrnn;

// The step of linear_before_reset=True, shared by gru_forward and gru_layer_norm_forward: r, z,
// n from this unit's input side x (gate k at x[k * H]) and the recurrent parts lin_k of its
// gates (W_hh h + b_hh, or its layer-normalised form).
template <typename T>
struct GruGates {
  T r, z, n;
};

template <typename T, bool Clip>
__device__ __forceinline__ GruGates<T> gru_gates(const T* x, T lin_r, T lin_z, T lin_n, int H,
                                                 const Clamp<T, Clip>& clamp) {
  GruGates<T> s;
  s.r = sigmoid(clamp(x[0] + lin_r, 0));
  s.z = sigmoid(clamp(x[H] + lin_z, 1));
  s.n = tanh_(clamp(x[2 * H] + s.r * lin_n, 2));
  return s;
}

// Its backward: the gradients dr, dz, dn of the gate inputs (into d, gate k at d[k * H]) from
// dh, that of the new state; s the kept r, z, n, hn the n gate's recurrent part.
template <typename T, bool Clip>
__device__ __forceinline__ void gru_gates_back(T dh, const T* s, T h_prev, T hn, int H,
                                               const Unclamp<T, Clip>& unclamp, T* d) {
  const T r = s[0], z = s[H], n = s[2 * H];
  d[2 * H] = unclamp(dh * (T(1) - z) * d_tanh(n), 2);
  d[H] = unclamp(dh * (h_prev - n) * d_sigmoid(z), 1);
  d[0] = unclamp(d[2 * H] * hn * d_sigmoid(r), 0);
}

// ---------------------------------------------------------------------------------------------
// linear_before_reset=True

// Forward of step t: the recurrent GEMM gh = h_prev W_hh^T has already run.
// Valid: h_next = y = the new state. Invalid: h_next = h_prev, y = 0.
template <typename T, bool Clip>
__global__ void gru_forward(
    const T* __restrict__ x_proj, int ld_x,  // [B, ld_x]  W_ih x_t + b_ih, columns [0, 3H): r, z, n
    const T* __restrict__ gh,      // [B, 3H]    h_prev W_hh^T
    const T* __restrict__ b_hh,    // [3H]
    const T* __restrict__ h_prev,  // [B, H]     state entering step t
    const long long* __restrict__ lengths, int t,  // [B] or nullptr (every step valid)
    T* __restrict__ y, int ld_y,  // [B, ld_y]  output of step t, columns [0, H)
    T* __restrict__ h_next,        // [B, H]     state leaving step t
    T* __restrict__ gates,         // [B, 3H]    out: r, z, n; nullptr in inference
    T* __restrict__ hn,            // [B, H]     out: W_hn h_prev + b_hn; nullptr in inference
    T clip,                        //            the bound of Clip
    unsigned char* __restrict__ inside,  // [B, 3H] out: Clip's flags; nullptr in inference
    const T* __restrict__ zoneout, int ld_z,  // [B, ld_z] M of step t; nullptr without zoneout
    int B, int H) {
  Unit me;
  if (!unit_of_thread(B, H, lengths, t, me)) return;
  const GateInputs<T> in = gate_inputs(me, x_proj, ld_x, gh, 3 * H, b_hh);
  const T lin = in.recurrent(2);
  const GruGates<T> s = gru_gates(in.x, in.recurrent(0), in.recurrent(1), lin, H,
                                  clamp_of<T, Clip>(me, clip, inside, 3));
  keep_gates(me, gates, s.r, s.z, s.n);
  if (hn != nullptr) hn[me.u] = lin;  // null exactly when gates is
  leave_step(me, (T(1) - s.z) * s.n + s.z * h_prev[me.u], h_prev, h_next, y, ld_y, zoneout,
             ld_z);
}

// Backward of step t, before the GEMM dh_rec = d_gh W_hh that the next (earlier) step reads.
// dL/dh_out = dh_carry + dh_rec (+ dy where valid).
// Valid: d_gx = gradients of the r, z, n pre-activations; d_gh the same with dn * r in the n
// block (the gradient of W_hh h + b_hh); dh_carry = dL/dh_out * z. Invalid: zeros, carry passes.
template <typename T, bool Clip>
__global__ void gru_backward(
    const T* __restrict__ gates,   // [B, 3H]    r, z, n of step t
    const T* __restrict__ hn,      // [B, H]     W_hn h_prev + b_hn of step t
    const T* __restrict__ h_prev,  // [B, H]     state entering step t
    const T* __restrict__ dy, int ld_dy,  // [B, ld_dy] dL/dy of step t, columns [0, H)
    const long long* __restrict__ lengths, int t,  // [B] or nullptr
    const T* __restrict__ dh_rec,  // [B, H]     d_gh of step t+1 (in time) times W_hh; 0 at first
    T* __restrict__ dh_carry,      // [B, H]     in: the rest of dL/dh_out; out: dL/dh_prev - dh_rec
    T* __restrict__ d_gx, int ld_g,  // [B, ld_g]  out: dr, dz, dn of the pre-activations, [0, 3H)
    T* __restrict__ d_gh,          // [B, 3H]    out: dr, dz, dn * r
    const unsigned char* __restrict__ inside,  // [B, 3H] Clip's flags of step t
    const T* __restrict__ zoneout, int ld_z,  // [B, ld_z] M of step t; nullptr without zoneout
    int B, int H) {
  Unit me;
  if (!unit_of_thread(B, H, lengths, t, me)) return;
  T* dq = me.at(d_gh, 3 * H);
  T dh, kept;
  if (!gradient_leaving(me, dy, ld_dy, dh_rec, dh_carry, d_gx, ld_g, 0, 3, zoneout, ld_z, dh,
                        kept)) {
    dq[0] = dq[H] = dq[2 * H] = T(0);
    return;
  }
  const T* s = me.at(gates, 3 * H);
  T* dx = me.at(d_gx, ld_g);
  gru_gates_back(dh, s, h_prev[me.u], hn[me.u], H, unclamp_of<T, Clip>(me, inside, 3), dx);
  dq[0] = dx[0];
  dq[H] = dx[H];
  dq[2 * H] = dx[2 * H] * s[0];  // the gradient of W_hn h + b_hn is dn * r
  dh_carry[me.u] = dh * s[H] + kept;
}

// ---------------------------------------------------------------------------------------------
// linear_before_reset=False: per step, GEMM h_prev W_hr,z^T -> gates kernel -> GEMM (r h) W_hn^T
// -> state kernel. Backward: state kernel -> GEMM dn W_hn -> reset kernel -> GEMM d_rz W_hr,z.

// Forward, first half of step t: r and z, and r * h_prev for the W_hn GEMM.
template <typename T, bool Clip>
__global__ void gru_textbook_forward_gates(
    const T* __restrict__ x_proj, int ld_x,  // [B, ld_x]  W_ih x_t + b_ih, columns [0, 3H): r, z, n
    const T* __restrict__ gh_rz,   // [B, 2H]    h_prev W_hh[0:2H]^T
    const T* __restrict__ b_hh,    // [3H]
    const T* __restrict__ h_prev,  // [B, H]     state entering step t
    T* __restrict__ gates,         // [B, 3H]    out: r, z (columns [0, 2H))
    T* __restrict__ rh,            // [B, H]     out: r * h_prev
    T clip,                        //            the bound of Clip
    unsigned char* __restrict__ inside,  // [B, 3H] out: Clip's flags of r, z; nullptr in inference
    int B, int H) {
  Unit me;
  if (!unit_of_thread(B, H, nullptr, 0, me)) return;  // no mask: the state kernel applies it
  const GateInputs<T> in = gate_inputs(me, x_proj, ld_x, gh_rz, 2 * H, b_hh);
  const Clamp<T, Clip> clamp = clamp_of<T, Clip>(me, clip, inside, 3);
  const T r = sigmoid(clamp(in.pre(0), 0));
  T* s = me.at(gates, 3 * H);
  s[0] = r;
  s[H] = sigmoid(clamp(in.pre(1), 1));
  rh[me.u] = r * h_prev[me.u];
}

// Forward, second half of step t: n and the new state, after gh_n = (r h) W_hn^T.
// Valid: h_next = y = the new state. Invalid: h_next = h_prev, y = 0.
template <typename T, bool Clip>
__global__ void gru_textbook_forward_state(
    const T* __restrict__ x_proj, int ld_x,  // [B, ld_x]  W_ih x_t + b_ih, columns [0, 3H): r, z, n
    const T* __restrict__ gh_n,    // [B, H]     (r h_prev) W_hh[2H:3H]^T
    const T* __restrict__ b_hh,    // [3H]
    const T* __restrict__ h_prev,  // [B, H]     state entering step t
    const long long* __restrict__ lengths, int t,  // [B] or nullptr (every step valid)
    T* __restrict__ y, int ld_y,  // [B, ld_y]  output of step t, columns [0, H)
    T* __restrict__ h_next,        // [B, H]     state leaving step t
    T* __restrict__ gates,         // [B, 3H]    in: z (columns [H, 2H)); out: n (columns [2H, 3H))
    T clip,                        //            the bound of Clip
    unsigned char* __restrict__ inside,  // [B, 3H] out: Clip's flag of n; nullptr in inference
    const T* __restrict__ zoneout, int ld_z,  // [B, ld_z] M of step t; nullptr without zoneout
    int B, int H) {
  Unit me;
  if (!unit_of_thread(B, H, lengths, t, me)) return;
  T* s = me.at(gates, 3 * H);
  const T z = s[H];
  const T n = tanh_(clamp_of<T, Clip>(me, clip, inside, 3)(
      me.at(x_proj, ld_x)[2 * H] + (gh_n[me.u] + b_hh[2 * H + me.j]), 2));
  s[2 * H] = n;
  leave_step(me, (T(1) - z) * n + z * h_prev[me.u], h_prev, h_next, y, ld_y, zoneout, ld_z);
}

// Backward, first half of step t: the z and n gradients and the direct part of dL/dh_prev.
// dL/dh_out = dh_carry + dh_rec (+ dy where valid).
// Valid: d_gx columns [H, 3H) = dz, dn; dh_carry = dL/dh_out * z. Invalid: zeros, carry passes.
template <typename T, bool Clip>
__global__ void gru_textbook_backward_state(
    const T* __restrict__ gates,   // [B, 3H]    r, z, n of step t
    const T* __restrict__ h_prev,  // [B, H]     state entering step t
    const T* __restrict__ dy, int ld_dy,  // [B, ld_dy] dL/dy of step t, columns [0, H)
    const long long* __restrict__ lengths, int t,  // [B] or nullptr
    const T* __restrict__ dh_rec,  // [B, H]     d_rz of step t+1 (in time) times W_hh[0:2H]
    T* __restrict__ dh_carry,      // [B, H]     in: the rest of dL/dh_out; out: its z h_prev part
    T* __restrict__ d_gx, int ld_g,  // [B, ld_g]  out: dz, dn (columns [H, 3H))
    const unsigned char* __restrict__ inside,  // [B, 3H] Clip's flags of step t
    const T* __restrict__ zoneout, int ld_z,  // [B, ld_z] M of step t; nullptr without zoneout
    int B, int H) {
  Unit me;
  if (!unit_of_thread(B, H, lengths, t, me)) return;
  T dh, kept;
  if (!gradient_leaving(me, dy, ld_dy, dh_rec, dh_carry, d_gx, ld_g, 1, 2, zoneout, ld_z, dh,
                        kept))
    return;
  const Unclamp<T, Clip> unclamp = unclamp_of<T, Clip>(me, inside, 3);
  const T* s = me.at(gates, 3 * H);
  const T z = s[H], n = s[2 * H];
  T* dx = me.at(d_gx, ld_g);
  dx[H] = unclamp(dh * (h_prev[me.u] - n) * d_sigmoid(z), 1);
  dx[2 * H] = unclamp(dh * (T(1) - z) * d_tanh(n), 2);
  dh_carry[me.u] = dh * z + kept;
}

// Backward, second half of step t, after d_rh = dn W_hn: the r gradient, the r part of
// dL/dh_prev, and r * h_prev (the input side of dW_hn). Invalid steps: zeros.
template <typename T, bool Clip>
__global__ void gru_textbook_backward_reset(
    const T* __restrict__ gates,   // [B, 3H]    r, z, n of step t
    const T* __restrict__ h_prev,  // [B, H]     state entering step t
    const T* __restrict__ d_rh,    // [B, H]     dn W_hh[2H:3H], the gradient of r * h_prev
    const long long* __restrict__ lengths, int t,  // [B] or nullptr
    T* __restrict__ dh_carry,      // [B, H]     in/out: += d_rh * r
    T* __restrict__ d_gx, int ld_g,  // [B, ld_g]  out: dr (columns [0, H))
    T* __restrict__ rh,            // [B, H]     out: r * h_prev
    const unsigned char* __restrict__ inside,  // [B, 3H] Clip's flags of step t
    int B, int H) {
  Unit me;
  if (!unit_of_thread(B, H, lengths, t, me)) return;
  T* dr = me.at(d_gx, ld_g);
  const long long u = me.u;
  if (!me.valid) {
    *dr = rh[u] = T(0);
    return;
  }
  const T r = *me.at(gates, 3 * H);
  const T hp = h_prev[u];
  *dr = unclamp_of<T, Clip>(me, inside, 3)(d_rh[u] * hp * d_sigmoid(r), 0);
  dh_carry[u] += d_rh[u] * r;
  rh[u] = r * hp;
}

// ---------------------------------------------------------------------------------------------
// Layer norm (cells.Variant.layer_norm, linear_before_reset=True only):
// gh = LN(W_hh h) g_hh + b_hh, then r, z, n as gru_forward (the input side is x_proj already).
// The LN needs the whole row of W_hh h, so these kernels run one block per batch row b, the
// block's threads stepping over the row's units, and share the row's sums through block_sum.
// An invalid step is the whole row's, so a block never leaves a barrier half-crossed.

// Forward of step t, after the GEMM gh = h_prev W_hh^T, normalised here in place (kept for
// backward in training; 0 at an invalid step, as gates and hn are, so that the sums over all
// steps after the loop see no stale values).
template <typename T, bool Clip>
__global__ void gru_layer_norm_forward(
    const T* __restrict__ x_proj, int ld_x,  // [B, ld_x]  the input side, columns [0, 3H)
    T* __restrict__ gh,            // [B, 3H]    in: h_prev W_hh^T; out: its LN (before g_hh)
    const T* __restrict__ g_hh,    // [3H]
    const T* __restrict__ b_hh,    // [3H]
    T eps,                         //            cells.LN_EPS
    const T* __restrict__ h_prev,  // [B, H]     state entering step t
    const long long* __restrict__ lengths, int t,  // [B] or nullptr (every step valid)
    T* __restrict__ y, int ld_y,  // [B, ld_y]  output of step t, columns [0, H)
    T* __restrict__ h_next,        // [B, H]     state leaving step t
    T* __restrict__ gates,         // [B, 3H]    out: r, z, n; nullptr in inference
    T* __restrict__ hn,            // [B, H]     out: the n block of gh; nullptr in inference
    T* __restrict__ stats,         // [B]        out: 1/std of gh; nullptr in inference
    T clip,                        //            the bound of Clip
    unsigned char* __restrict__ inside,  // [B, 3H] out: Clip's flags; nullptr in inference
    const T* __restrict__ zoneout, int ld_z,  // [B, ld_z] M of step t; nullptr without zoneout
    int B, int H) {
  const int b = blockIdx.x;
  if (b >= B) return;
  T* row = gh + (long long)b * 3 * H;
  if (!valid_step(lengths, b, t)) {
    for (int j = threadIdx.x; j < H; j += blockDim.x) {
      const Unit me = unit_of_row(b, j, H, false);
      leave_step(me, T(0), h_prev, h_next, y, ld_y, zoneout, ld_z);
      for (int k = 0; k < 3; ++k) row[k * H + j] = T(0);
      keep_gates(me, gates, T(0), T(0), T(0));
      if (hn != nullptr) hn[me.u] = T(0);
    }
    if (stats != nullptr && threadIdx.x == 0) stats[b] = T(0);
    return;
  }
  const T inv_h = normalise_row(row, 3 * H, eps);
  for (int j = threadIdx.x; j < H; j += blockDim.x) {
    const Unit me = unit_of_row(b, j, H, true);
    T lin[3];
    for (int k = 0; k < 3; ++k) lin[k] = row[k * H + j] * g_hh[k * H + j] + b_hh[k * H + j];
    const GruGates<T> s = gru_gates(me.at(x_proj, ld_x), lin[0], lin[1], lin[2], H,
                                    clamp_of<T, Clip>(me, clip, inside, 3));
    keep_gates(me, gates, s.r, s.z, s.n);
    if (hn != nullptr) hn[me.u] = lin[2];
    leave_step(me, (T(1) - s.z) * s.n + s.z * h_prev[me.u], h_prev, h_next, y, ld_y, zoneout,
               ld_z);
  }
  if (stats != nullptr && threadIdx.x == 0) stats[b] = inv_h;
}

// Backward of step t, before the GEMM dh_rec = d_gh W_hh. d_gx as gru_backward's; d_gh is the
// gradient of the raw W_hh h_prev (the LN's backward) of the gradient of gh, which is d_gx
// with dn * r in the n block. Invalid: zeros, and the carry passes through.
template <typename T, bool Clip>
__global__ void gru_layer_norm_backward(
    const T* __restrict__ gates,   // [B, 3H]    r, z, n of step t
    const T* __restrict__ hn,      // [B, H]     the n block of gh of step t
    const T* __restrict__ gh_norm,  // [B, 3H]   LN(W_hh h_prev) of step t
    const T* __restrict__ stats,   // [B]        1/std of gh of step t
    const T* __restrict__ g_hh,    // [3H]
    const T* __restrict__ h_prev,  // [B, H]     state entering step t
    const T* __restrict__ dy, int ld_dy,  // [B, ld_dy] dL/dy of step t, columns [0, H)
    const long long* __restrict__ lengths, int t,  // [B] or nullptr
    const T* __restrict__ dh_rec,  // [B, H]     d_gh of step t+1 (in time) times W_hh; 0 at first
    T* __restrict__ dh_carry,      // [B, H]     in: the rest of dL/dh_out; out: dL/dh_prev - dh_rec
    T* __restrict__ d_gx, int ld_g,  // [B, ld_g]  out: dr, dz, dn of the gate inputs, [0, 3H)
    T* __restrict__ d_gh,          // [B, 3H]    out: gradient of W_hh h_prev (before LN)
    const unsigned char* __restrict__ inside,  // [B, 3H] Clip's flags of step t
    const T* __restrict__ zoneout, int ld_z,  // [B, ld_z] M of step t; nullptr without zoneout
    int B, int H) {
  const int b = blockIdx.x;
  if (b >= B) return;
  const bool valid = valid_step(lengths, b, t);
  T* q = d_gh + (long long)b * 3 * H;  // first the gradient of gh, then of W_hh h_prev
  const T* v = gh_norm + (long long)b * 3 * H;
  T r1 = T(0), r2 = T(0);
  for (int j = threadIdx.x; j < H; j += blockDim.x) {
    const Unit me = unit_of_row(b, j, H, valid);
    T dh, kept;
    if (!gradient_leaving(me, dy, ld_dy, dh_rec, dh_carry, d_gx, ld_g, 0, 3, zoneout, ld_z, dh,
                          kept)) {
      q[j] = q[H + j] = q[2 * H + j] = T(0);
      continue;
    }
    const T* s = me.at(gates, 3 * H);
    T* dx = me.at(d_gx, ld_g);
    gru_gates_back(dh, s, h_prev[me.u], hn[me.u], H, unclamp_of<T, Clip>(me, inside, 3), dx);
    q[j] = dx[0];
    q[H + j] = dx[H];
    q[2 * H + j] = dx[2 * H] * s[0];  // the gradient of gh's n block is dn * r
    dh_carry[me.u] = dh * s[H] + kept;
    for (int k = 0; k < 3; ++k) {
      const T d_hat = q[k * H + j] * g_hh[k * H + j];
      r1 += d_hat;
      r2 += d_hat * v[k * H + j];
    }
  }
  if (!valid) return;  // the whole block
  const T m1 = block_sum(r1) / T(3 * H), m2 = block_sum(r2) / T(3 * H);
  const T inv_h = stats[b];
  for (int k = threadIdx.x; k < 3 * H; k += blockDim.x)
    q[k] = inv_h * (q[k] * g_hh[k] - m1 - v[k] * m2);
}
