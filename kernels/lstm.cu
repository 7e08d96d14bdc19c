// LSTM, one time step t per launch, one thread per (b, j); equations in fastrnn/cells.py, gates
// i, f, g, o stacked in that order (PyTorch's):
//   i, f, o = sigmoid(.), g = tanh(.) of gx + gh + b_hh;  c' = f c + i g;  h' = o tanh(c')
// The forward keeps the activated gates and the states hs, cs; backward recomputes tanh(c').
//
// Variants (cells.Variant): Clip clamps each gate's whole input to [-clip, clip] (a compile-time
// switch; the flags of Clamp are kept in `inside` for backward); peepholes P (nullptr without)
// add p_i c and p_f c to the inputs of i and f, and p_o c' to that of o, before the clamp:
//   i = sigmoid(clamp(a_i + p_i c)), f likewise, g = tanh(clamp(a_g)),
//   c' = f c + i g,  o = sigmoid(clamp(a_o + p_o c')),  h' = o tanh(c')
// dP is summed above the backends from d_gx and the saved cs. Zoneout acts on h only
// (common.cuh, leave_step and gradient_leaving); c is never zoned out.
//
// Projection (cells.Variant.proj_size, W_hr [P, H]): lstm_forward writes h_full = o tanh(c')
// instead of the state; the GEMM h_full W_hr^T and lstm_projection_forward then make the state
// h' of width P (lengths and zoneout there). Backward mirrors it: lstm_projection_backward
// starts the step on the P-wide gradient, the GEMM times W_hr gives dL/dh_full, which
// lstm_backward takes as dy (its h carries nullptr).
//
// Shapes as in rnn.cu: "[B, ld]" arguments may be views with rows ld elements apart.

#include "common.cuh"

using namespace fastrnn;

// The cell's step, shared by lstm_forward and lstm_layer_norm_forward: from the inputs of the
// gates i, f, g, o (before the peephole terms) and the entering c, the activated gates and c'.
template <typename T>
struct LstmGates {
  T i, f, g, o, c;
};

template <typename T, bool Clip>
__device__ __forceinline__ LstmGates<T> lstm_gates(T a_i, T a_f, T a_g, T a_o, T c_in,
                                                   const T* P, const Unit& me,
                                                   const Clamp<T, Clip>& clamp) {
  if (P != nullptr) {
    a_i += P[me.j] * c_in;
    a_f += P[me.H + me.j] * c_in;
  }
  LstmGates<T> s;
  s.i = sigmoid(clamp(a_i, 0));
  s.f = sigmoid(clamp(a_f, 1));
  s.g = tanh_(clamp(a_g, 2));
  s.c = s.f * c_in + s.i * s.g;
  if (P != nullptr) a_o += P[2 * me.H + me.j] * s.c;  // o looks at the new cell state
  s.o = sigmoid(clamp(a_o, 3));
  return s;
}

// Its backward: from dc, the gradient of c' through h (not yet o's peephole part), and d_o,
// that of o's input, the gradients of the four gate inputs into d (gate k at d[k * H]);
// returns dL/dc_prev less the carry's part, dc * f plus the peepholes' d_i p_i + d_f p_f.
template <typename T, bool Clip>
__device__ __forceinline__ T lstm_gates_back(T dc, T d_o, const T* s, T c_in, const T* P,
                                             const Unit& me, const Unclamp<T, Clip>& unclamp,
                                             T* d) {
  const int H = me.H;
  const T i = s[0], f = s[H], g = s[2 * H];
  if (P != nullptr) dc += d_o * P[2 * H + me.j];
  d[0] = unclamp(dc * g * d_sigmoid(i), 0);
  d[H] = unclamp(dc * c_in * d_sigmoid(f), 1);
  d[2 * H] = unclamp(dc * i * d_tanh(g), 2);
  d[3 * H] = d_o;
  return dc * f + (P != nullptr ? d[0] * P[me.j] + d[H] * P[H + me.j] : T(0));
}

// Forward of step t: the recurrent GEMM gh = h_prev W_hh^T has already run.
// Valid: h_next, c_next = the new state, y = h_next. Invalid: the state is kept, y = 0.
template <typename T, bool Clip>
__global__ void lstm_forward(
    const T* __restrict__ x_proj, int ld_x,  // [B, ld_x]  W_ih x_t + b_ih, columns [0, 4H): i,f,g,o
    const T* __restrict__ gh,      // [B, 4H]    h_prev W_hh^T
    const T* __restrict__ b_hh,    // [4H]
    const T* __restrict__ h_prev,  // [B, H]     states entering step t (h [B, P] if projecting)
    const T* __restrict__ c_prev,  // [B, H]
    const long long* __restrict__ lengths, int t,  // [B] or nullptr (every step valid)
    T* __restrict__ y, int ld_y,  // [B, ld_y]  output of step t, columns [0, H)
    T* __restrict__ h_next,        // [B, H]     states leaving step t (h [B, P] if projecting)
    T* __restrict__ c_next,        // [B, H]
    T* __restrict__ gates,         // [B, 4H]    out: activated i, f, g, o; nullptr in inference
    T* __restrict__ h_full,        // [B, H]     out: o tanh(c'), 0 at an invalid step, where W_hr
                                   //            follows (h_prev, y, h_next, zoneout unused then);
                                   //            nullptr without projection
    const T* __restrict__ P,       // [3, H]     peepholes p_i, p_f, p_o; nullptr without
    T clip,                        //            the bound of Clip
    unsigned char* __restrict__ inside,  // [B, 4H] out: Clip's flags; nullptr in inference
    const T* __restrict__ zoneout, int ld_z,  // [B, ld_z] M of step t; nullptr without zoneout
    int B, int H) {
  Unit me;
  if (!unit_of_thread(B, H, lengths, t, me)) return;
  const GateInputs<T> in = gate_inputs(me, x_proj, ld_x, gh, 4 * H, b_hh);
  const Clamp<T, Clip> clamp = clamp_of<T, Clip>(me, clip, inside, 4);
  const long long u = me.u;
  const LstmGates<T> s =
      lstm_gates(in.pre(0), in.pre(1), in.pre(2), in.pre(3), c_prev[u], P, me, clamp);
  keep_gates(me, gates, s.i, s.f, s.g, s.o);
  const T h = s.o * tanh_(s.c);
  if (h_full != nullptr)
    h_full[u] = me.valid ? h : T(0);
  else
    leave_step(me, h, h_prev, h_next, y, ld_y, zoneout, ld_z);
  c_next[u] = me.valid ? s.c : c_prev[u];
}

// Forward of step t of a projecting LSTM, after h_proj = h_full W_hr^T: the state and output,
// P wide, as leave_step makes them (lengths, zoneout).
template <typename T>
__global__ void lstm_projection_forward(
    const T* __restrict__ h_proj,  // [B, P]     h_full W_hr^T of step t
    const T* __restrict__ h_prev,  // [B, P]     state entering step t
    const long long* __restrict__ lengths, int t,  // [B] or nullptr (every step valid)
    T* __restrict__ y, int ld_y,  // [B, ld_y]  output of step t, columns [0, P)
    T* __restrict__ h_next,        // [B, P]     state leaving step t
    const T* __restrict__ zoneout, int ld_z,  // [B, ld_z] M of step t; nullptr without zoneout
    int B, int P) {
  Unit me;
  if (!unit_of_thread(B, P, lengths, t, me)) return;
  leave_step(me, h_proj[me.u], h_prev, h_next, y, ld_y, zoneout, ld_z);
}

// Start of the backward of step t of a projecting LSTM, P wide: dh_proj = the gradient of
// h_full W_hr^T (gradient_leaving: M times the sum of dh_carry, dh_rec and dy at a valid step,
// 0 at an invalid one), and the new carry.
template <typename T>
__global__ void lstm_projection_backward(
    const T* __restrict__ dy, int ld_dy,  // [B, ld_dy] dL/dy of step t, columns [0, P)
    const long long* __restrict__ lengths, int t,  // [B] or nullptr
    const T* __restrict__ dh_rec,  // [B, P]     d_gx of step t+1 (in time) times W_hh; 0 at first
    T* __restrict__ dh_carry,      // [B, P]     in: the rest of dL/dh_out; out: dL/dh_prev - dh_rec
    const T* __restrict__ zoneout, int ld_z,  // [B, ld_z] M of step t; nullptr without zoneout
    T* __restrict__ dh_proj,       // [B, P]     out: dL/d(h_full W_hr^T) of step t
    int B, int P) {
  Unit me;
  if (!unit_of_thread(B, P, lengths, t, me)) return;
  T dh, kept;
  T* no_gates = nullptr;
  if (!gradient_leaving(me, dy, ld_dy, dh_rec, dh_carry, no_gates, 0, 0, 0, zoneout, ld_z, dh,
                        kept)) {
    dh_proj[me.u] = T(0);
    return;
  }
  dh_proj[me.u] = dh;
  dh_carry[me.u] = kept;
}

// Backward of step t, before the GEMM dh_rec = d_gx W_hh that the next (earlier) step reads.
// dL/dh_out = dh_carry + dh_rec (+ dy where valid), dL/dc_out = dc_carry.
// Valid: d_gx = the gate pre-activation gradients, dh_carry = 0, dc_carry = dL/dc_out' * f
// (plus the peepholes' d_i p_i + d_f p_f). Invalid: d_gx = 0 and both carries pass through.
template <typename T, bool Clip>
__global__ void lstm_backward(
    const T* __restrict__ gates,   // [B, 4H]    activated i, f, g, o of step t
    const T* __restrict__ c_prev,  // [B, H]     cell state entering step t
    const T* __restrict__ c_out,   // [B, H]     cell state leaving step t
    const T* __restrict__ dy, int ld_dy,  // [B, ld_dy] dL/dy of step t, columns [0, H)
                                          //            (dL/dh_full where projecting)
    const long long* __restrict__ lengths, int t,  // [B] or nullptr
    const T* __restrict__ dh_rec,  // [B, H]     d_gx of step t+1 (in time) times W_hh; 0 at first
    T* __restrict__ dh_carry,      // [B, H]     in: the rest of dL/dh_out; out: dL/dh_prev - dh_rec
                                   //            (both nullptr where projecting)
    T* __restrict__ dc_carry,      // [B, H]     in: dL/dc_out; out: dL/dc_prev
    T* __restrict__ d_gx, int ld_g,  // [B, ld_g]  out: gradients of the i, f, g, o gate inputs
    const T* __restrict__ P,       // [3, H]     peepholes p_i, p_f, p_o; nullptr without
    const unsigned char* __restrict__ inside,  // [B, 4H] Clip's flags of step t
    const T* __restrict__ zoneout, int ld_z,  // [B, ld_z] M of step t; nullptr without zoneout
    int B, int H) {
  Unit me;
  if (!unit_of_thread(B, H, lengths, t, me)) return;
  T dh, kept;
  if (!gradient_leaving(me, dy, ld_dy, dh_rec, dh_carry, d_gx, ld_g, 0, 4, zoneout, ld_z, dh,
                        kept))
    return;
  const Unclamp<T, Clip> unclamp = unclamp_of<T, Clip>(me, inside, 4);
  const long long u = me.u;
  const T* s = me.at(gates, 4 * H);
  const T o = s[3 * H];
  const T tanh_c = tanh_(c_out[u]);
  const T d_o = unclamp(dh * tanh_c * d_sigmoid(o), 3);
  const T dc = dc_carry[u] + dh * o * d_tanh(tanh_c);
  if (dh_carry != nullptr) dh_carry[u] = kept;
  dc_carry[u] = lstm_gates_back(dc, d_o, s, c_prev[u], P, me, unclamp, me.at(d_gx, ld_g));
}

// ---------------------------------------------------------------------------------------------
// Layer norm (cells.Variant.layer_norm): gh = LN(W_hh h) g_hh + b_hh, h' = o tanh(LN(c') g_c + b_c)
// (the input side, LN(W_ih x) g_ih + b_ih, is x_proj already). Both norms need a whole row, so
// these kernels run one block per batch row b, the block's threads stepping over the row's
// units, and share the row's sums through block_sum. An invalid step is the whole row's, so a
// block never leaves a barrier half-crossed. The peepholes, Clip, zoneout and the projection
// work as in lstm_forward / lstm_backward.

// Forward of step t, after the GEMM gh = h_prev W_hh^T. gh is normalised in place (kept for
// backward in training; 0 at an invalid step, as gates are, so that the sums over all steps
// after the loop see no stale values).
template <typename T, bool Clip>
__global__ void lstm_layer_norm_forward(
    const T* __restrict__ x_proj, int ld_x,  // [B, ld_x]  the input side, columns [0, 4H)
    T* __restrict__ gh,            // [B, 4H]    in: h_prev W_hh^T; out: its LN (before g_hh)
    const T* __restrict__ g_hh,    // [4H]
    const T* __restrict__ b_hh,    // [4H]
    const T* __restrict__ g_c,     // [H]
    const T* __restrict__ b_c,     // [H]
    T eps,                         //            cells.LN_EPS
    const T* __restrict__ h_prev,  // [B, H]     states entering step t (h [B, P] if projecting)
    const T* __restrict__ c_prev,  // [B, H]
    const long long* __restrict__ lengths, int t,  // [B] or nullptr (every step valid)
    T* __restrict__ y, int ld_y,  // [B, ld_y]  output of step t
    T* __restrict__ h_next,        // [B, H]     states leaving step t (h [B, P] if projecting)
    T* __restrict__ c_next,        // [B, H]
    T* __restrict__ gates,         // [B, 4H]    out: activated i, f, g, o (scratch in inference)
    T* __restrict__ h_full,        // [B, H]     out: o tanh(...) where W_hr follows; nullptr
    T* __restrict__ stats,         // [B, 3]     out: 1/std of gh, mean and 1/std of c'; nullptr
                                   //            in inference
    const T* __restrict__ P,       // [3, H]     peepholes p_i, p_f, p_o; nullptr without
    T clip,                        //            the bound of Clip
    unsigned char* __restrict__ inside,  // [B, 4H] out: Clip's flags; nullptr in inference
    const T* __restrict__ zoneout, int ld_z,  // [B, ld_z] M of step t; nullptr without zoneout
    int B, int H) {
  const int b = blockIdx.x;
  if (b >= B) return;
  T* row = gh + (long long)b * 4 * H;
  if (!valid_step(lengths, b, t)) {
    for (int j = threadIdx.x; j < H; j += blockDim.x) {
      const Unit me = unit_of_row(b, j, H, false);
      if (h_full != nullptr) h_full[me.u] = T(0);
      else leave_step(me, T(0), h_prev, h_next, y, ld_y, zoneout, ld_z);
      c_next[me.u] = c_prev[me.u];
      for (int k = 0; k < 4; ++k) row[k * H + j] = me.at(gates, 4 * H)[k * H] = T(0);
    }
    if (stats != nullptr && threadIdx.x == 0) {
      stats[3 * b] = stats[3 * b + 1] = stats[3 * b + 2] = T(0);
    }
    return;
  }
  const T inv_h = normalise_row(row, 4 * H, eps);
  T sum_c = T(0);
  for (int j = threadIdx.x; j < H; j += blockDim.x) {
    const Unit me = unit_of_row(b, j, H, true);
    const Clamp<T, Clip> clamp = clamp_of<T, Clip>(me, clip, inside, 4);
    const T* x = me.at(x_proj, ld_x);
    T a[4];
    for (int k = 0; k < 4; ++k) {
      a[k] = x[k * H] + (row[k * H + j] * g_hh[k * H + j] + b_hh[k * H + j]);
    }
    const LstmGates<T> s = lstm_gates(a[0], a[1], a[2], a[3], c_prev[me.u], P, me, clamp);
    keep_gates(me, gates, s.i, s.f, s.g, s.o);
    c_next[me.u] = s.c;
    sum_c += s.c;
  }
  const T mean_c = block_sum(sum_c) / T(H);
  T sq = T(0);
  for (int j = threadIdx.x; j < H; j += blockDim.x) {
    const T d = c_next[(long long)b * H + j] - mean_c;
    sq += d * d;
  }
  const T inv_c = T(1) / sqrt_(block_sum(sq) / T(H) + eps);
  for (int j = threadIdx.x; j < H; j += blockDim.x) {
    const Unit me = unit_of_row(b, j, H, true);
    const T c_norm = (c_next[me.u] - mean_c) * inv_c * g_c[j] + b_c[j];
    const T h = me.at(gates, 4 * H)[3 * H] * tanh_(c_norm);
    if (h_full != nullptr) h_full[me.u] = h;
    else leave_step(me, h, h_prev, h_next, y, ld_y, zoneout, ld_z);
  }
  if (stats != nullptr && threadIdx.x == 0) {
    stats[3 * b] = inv_h;
    stats[3 * b + 1] = mean_c;
    stats[3 * b + 2] = inv_c;
  }
}

// Backward of step t, before the GEMM dh_rec = d_gh W_hh. Besides d_gx (the gradients of the
// gate inputs, whose sums make db_hh, and with gh_norm dg_hh, after the loop) it writes d_gh,
// the gradient of the raw W_hh h_prev (the LN's backward), and d_c_norm, that of LN(c') g_c +
// b_c (dg_c and db_c after the loop). Invalid: zeros, and the carries pass through.
template <typename T, bool Clip>
__global__ void lstm_layer_norm_backward(
    const T* __restrict__ gates,   // [B, 4H]    activated i, f, g, o of step t
    const T* __restrict__ gh_norm,  // [B, 4H]   LN(W_hh h_prev) of step t
    const T* __restrict__ stats,   // [B, 3]     1/std of gh, mean and 1/std of c' of step t
    const T* __restrict__ g_hh,    // [4H]
    const T* __restrict__ g_c,     // [H]
    const T* __restrict__ b_c,     // [H]
    const T* __restrict__ c_prev,  // [B, H]     cell state entering step t
    const T* __restrict__ c_out,   // [B, H]     cell state leaving step t
    const T* __restrict__ dy, int ld_dy,  // [B, ld_dy] dL/dy (dL/dh_full where projecting)
    const long long* __restrict__ lengths, int t,  // [B] or nullptr
    const T* __restrict__ dh_rec,  // [B, H]     as lstm_backward (nullptr where projecting)
    T* __restrict__ dh_carry,      // [B, H]     as lstm_backward (nullptr where projecting)
    T* __restrict__ dc_carry,      // [B, H]     in: dL/dc_out; out: dL/dc_prev
    T* __restrict__ d_gx, int ld_g,  // [B, ld_g]  out: gradients of the i, f, g, o gate inputs
    T* __restrict__ d_gh,          // [B, 4H]    out: gradient of W_hh h_prev (before LN)
    T* __restrict__ d_c_norm,      // [B, H]     out: gradient of LN(c') g_c + b_c
    const T* __restrict__ P,       // [3, H]     peepholes p_i, p_f, p_o; nullptr without
    const unsigned char* __restrict__ inside,  // [B, 4H] Clip's flags of step t
    const T* __restrict__ zoneout, int ld_z,  // [B, ld_z] M of step t; nullptr without zoneout
    int B, int H) {
  const int b = blockIdx.x;
  if (b >= B) return;
  const bool valid = valid_step(lengths, b, t);
  const long long row = (long long)b * 4 * H;
  const T inv_h = stats[3 * b], mean_c = stats[3 * b + 1], inv_c = stats[3 * b + 2];
  T s1 = T(0), s2 = T(0);
  for (int j = threadIdx.x; j < H; j += blockDim.x) {
    const Unit me = unit_of_row(b, j, H, valid);
    T dh, kept;
    if (!gradient_leaving(me, dy, ld_dy, dh_rec, dh_carry, d_gx, ld_g, 0, 4, zoneout, ld_z, dh,
                          kept)) {
      for (int k = 0; k < 4; ++k) d_gh[row + k * H + j] = T(0);
      d_c_norm[me.u] = T(0);
      continue;
    }
    if (dh_carry != nullptr) dh_carry[me.u] = kept;
    const T c_hat = (c_out[me.u] - mean_c) * inv_c;
    const T tanh_c = tanh_(c_hat * g_c[j] + b_c[j]);
    const T o = me.at(gates, 4 * H)[3 * H];
    me.at(d_gx, ld_g)[3 * H] = unclamp_of<T, Clip>(me, inside, 4)(dh * tanh_c * d_sigmoid(o), 3);
    const T d_norm = dh * o * d_tanh(tanh_c);
    d_c_norm[me.u] = d_norm;
    s1 += d_norm * g_c[j];
    s2 += d_norm * g_c[j] * c_hat;
  }
  if (!valid) return;  // the whole block
  const T m1 = block_sum(s1) / T(H), m2 = block_sum(s2) / T(H);
  T r1 = T(0), r2 = T(0);
  for (int j = threadIdx.x; j < H; j += blockDim.x) {
    const Unit me = unit_of_row(b, j, H, true);
    const T c_hat = (c_out[me.u] - mean_c) * inv_c;
    T* d = me.at(d_gx, ld_g);
    const T dc = dc_carry[me.u] + inv_c * (d_c_norm[me.u] * g_c[j] - m1 - c_hat * m2);
    dc_carry[me.u] = lstm_gates_back(dc, d[3 * H], me.at(gates, 4 * H), c_prev[me.u], P, me,
                                     unclamp_of<T, Clip>(me, inside, 4), d);
    for (int k = 0; k < 4; ++k) {
      const T d_hat = d[k * H] * g_hh[k * H + j];
      r1 += d_hat;
      r2 += d_hat * gh_norm[row + k * H + j];
    }
  }
  const T m3 = block_sum(r1) / T(4 * H), m4 = block_sum(r2) / T(4 * H);
  const T* d_row = d_gx + (long long)b * ld_g;
  for (int k = threadIdx.x; k < 4 * H; k += blockDim.x)
    d_gh[row + k] = inv_h * (d_row[k] * g_hh[k] - m3 - gh_norm[row + k] * m4);
}
