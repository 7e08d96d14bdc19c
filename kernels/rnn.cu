// Elman RNN, one time step t per launch, one thread per (b, j); equations in fastrnn/cells.py:
//   h' = act(gx + gh + b_hh),  act = tanh (Relu = false) or relu (Relu = true)
// The forward keeps only the states hs: act' is written from act's output h'.
// Clip (cells.Variant.clip, a compile-time switch) clamps the pre-activation to [-clip, clip]:
// h' = act(clamp(gx + gh + b_hh)); the clamp's flags are kept in `inside` for backward.
// Zoneout (common.cuh, leave_step) makes hs the zoned-out states, so the cell's own output,
// whose act' backward needs, is kept in `kept_h` then.
//
// Shapes: B batch rows, H hidden units. A "[B, ld]" matrix has B rows ld elements apart, of which
// the kernel uses the first H (or G*H); such arguments may be views into wider arrays (the two
// halves of a bidirectional layer). All other matrices are dense.

#include "common.cuh"

using namespace fastrnn;

// Forward of step t: the recurrent GEMM gh = h_prev W_hh^T has already run.
// Valid (t < lengths[b]): h_next = y = act(x_proj + gh + b_hh). Invalid: h_next = h_prev, y = 0.
template <typename T, bool Relu, bool Clip>
__global__ void rnn_forward(
    const T* __restrict__ x_proj, int ld_x,  // [B, ld_x]  W_ih x_t + b_ih, columns [0, H)
    const T* __restrict__ gh,      // [B, H]     h_prev W_hh^T
    const T* __restrict__ b_hh,    // [H]
    const T* __restrict__ h_prev,  // [B, H]     state entering step t
    const long long* __restrict__ lengths, int t,  // [B] or nullptr (every step valid)
    T* __restrict__ y, int ld_y,  // [B, ld_y]  output of step t, columns [0, H)
    T* __restrict__ h_next,        // [B, H]     state leaving step t
    T clip,                        //            the bound of Clip
    unsigned char* __restrict__ inside,  // [B, H] out: Clip's flags; nullptr in inference
    const T* __restrict__ zoneout, int ld_z,  // [B, ld_z] M of step t; nullptr without zoneout
    T* __restrict__ kept_h,        // [B, H]     out: act(...) before zoneout; nullptr unless
                                   //            training with zoneout
    int B, int H) {
  Unit me;
  if (!unit_of_thread(B, H, lengths, t, me)) return;
  const T pre = clamp_of<T, Clip>(me, clip, inside, 1)(
      *me.at(x_proj, ld_x) + (gh[me.u] + b_hh[me.j]), 0);
  const T h = Relu ? relu(pre) : tanh_(pre);
  keep_gates(me, kept_h, h);
  leave_step(me, h, h_prev, h_next, y, ld_y, zoneout, ld_z);
}

// Backward of step t, before the GEMM dh_rec = d_gx W_hh that the next (earlier) step reads.
// The gradient reaching the state leaving step t is dh_carry + dh_rec (+ dy where valid).
// Valid: d_gx = that * act'(h_out), dh_carry = 0 (all of dL/dh_prev goes through W_hh).
// Invalid: d_gx = 0, dh_carry = that (the state passed through unchanged).
template <typename T, bool Relu, bool Clip>
__global__ void rnn_backward(
    const T* __restrict__ h_out,   // [B, H]     act's output of step t (hs, or kept_h with zoneout)
    const T* __restrict__ dy, int ld_dy,  // [B, ld_dy] dL/dy of step t, columns [0, H)
    const long long* __restrict__ lengths, int t,  // [B] or nullptr
    const T* __restrict__ dh_rec,  // [B, H]     d_gx of step t+1 (in time) times W_hh; 0 at first
    T* __restrict__ dh_carry,      // [B, H]     in: the rest of dL/dh_out; out: dL/dh_prev - dh_rec
    T* __restrict__ d_gx, int ld_g,  // [B, ld_g]  out: dL/d(pre-activation), columns [0, H)
    const unsigned char* __restrict__ inside,  // [B, H] Clip's flags of step t
    const T* __restrict__ zoneout, int ld_z,  // [B, ld_z] M of step t; nullptr without zoneout
    int B, int H) {
  Unit me;
  if (!unit_of_thread(B, H, lengths, t, me)) return;
  T dh, kept;
  if (!gradient_leaving(me, dy, ld_dy, dh_rec, dh_carry, d_gx, ld_g, 0, 1, zoneout, ld_z, dh,
                        kept))
    return;
  const T y_out = h_out[me.u];
  *me.at(d_gx, ld_g) = unclamp_of<T, Clip>(me, inside, 1)(
      dh * (Relu ? d_relu(y_out) : d_tanh(y_out)), 0);
  dh_carry[me.u] = kept;
}
