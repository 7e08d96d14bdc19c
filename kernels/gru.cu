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
  const Clamp<T, Clip> clamp = clamp_of<T, Clip>(me, clip, inside, 3);
  const T r = sigmoid(clamp(in.pre(0), 0)), z = sigmoid(clamp(in.pre(1), 1));
  const T lin = in.recurrent(2);
  const T n = tanh_(clamp(in.input(2) + r * lin, 2));
  keep_gates(me, gates, r, z, n);
  if (hn != nullptr) hn[me.u] = lin;  // null exactly when gates is
  leave_step(me, (T(1) - z) * n + z * h_prev[me.u], h_prev, h_next, y, ld_y, zoneout, ld_z);
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
  const Unclamp<T, Clip> unclamp = unclamp_of<T, Clip>(me, inside, 3);
  const T* s = me.at(gates, 3 * H);
  const T r = s[0], z = s[H], n = s[2 * H];
  const T dn = unclamp(dh * (T(1) - z) * d_tanh(n), 2);
  const T dz = unclamp(dh * (h_prev[me.u] - n) * d_sigmoid(z), 1);
  const T dr = unclamp(dn * hn[me.u] * d_sigmoid(r), 0);
  T* dx = me.at(d_gx, ld_g);
  dx[0] = dq[0] = dr;
  dx[H] = dq[H] = dz;
  dx[2 * H] = dn;
  dq[2 * H] = dn * r;
  dh_carry[me.u] = dh * z + kept;
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
