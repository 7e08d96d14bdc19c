// LSTM, one time step t per launch, one thread per (b, j); equations in fastrnn/cells.py, gates
// i, f, g, o stacked in that order (PyTorch's):
//   i, f, o = sigmoid(.), g = tanh(.) of gx + gh + b_hh;  c' = f c + i g;  h' = o tanh(c')
// The forward keeps the activated gates and the states hs, cs; backward recomputes tanh(c').
//
// Shapes as in rnn.cu: "[B, ld]" arguments may be views with rows ld elements apart.

#include "common.cuh"

using namespace fastrnn;

// Forward of step t: the recurrent GEMM gh = h_prev W_hh^T has already run.
// Valid: h_next, c_next = the new state, y = h_next. Invalid: the state is kept, y = 0.
template <typename T>
__global__ void lstm_forward(
    const T* __restrict__ x_proj, int ld_x,  // [B, ld_x]  W_ih x_t + b_ih, columns [0, 4H): i,f,g,o
    const T* __restrict__ gh,      // [B, 4H]    h_prev W_hh^T
    const T* __restrict__ b_hh,    // [4H]
    const T* __restrict__ h_prev,  // [B, H]     states entering step t
    const T* __restrict__ c_prev,  // [B, H]
    const long long* __restrict__ lengths, int t,  // [B] or nullptr (every step valid)
    T* __restrict__ y, int ld_y,  // [B, ld_y]  output of step t, columns [0, H)
    T* __restrict__ h_next,        // [B, H]     states leaving step t
    T* __restrict__ c_next,        // [B, H]
    T* __restrict__ gates,         // [B, 4H]    out: activated i, f, g, o; nullptr in inference
    int B, int H) {
  Unit me;
  if (!unit_of_thread(B, H, lengths, t, me)) return;
  const GateInputs<T> in = gate_inputs(me, x_proj, ld_x, gh, 4 * H, b_hh);
  const T i = sigmoid(in.pre(0)), f = sigmoid(in.pre(1));
  const T g = tanh_(in.pre(2)), o = sigmoid(in.pre(3));
  const long long u = me.u;
  const T c = f * c_prev[u] + i * g;
  keep_gates(me, gates, i, f, g, o);
  leave_step(me, o * tanh_(c), h_prev, h_next, y, ld_y);
  c_next[u] = me.valid ? c : c_prev[u];
}

// Backward of step t, before the GEMM dh_rec = d_gx W_hh that the next (earlier) step reads.
// dL/dh_out = dh_carry + dh_rec (+ dy where valid), dL/dc_out = dc_carry.
// Valid: d_gx = the gate pre-activation gradients, dh_carry = 0, dc_carry = dL/dc_out' * f.
// Invalid: d_gx = 0 and both carries pass through.
template <typename T>
__global__ void lstm_backward(
    const T* __restrict__ gates,   // [B, 4H]    activated i, f, g, o of step t
    const T* __restrict__ c_prev,  // [B, H]     cell state entering step t
    const T* __restrict__ c_out,   // [B, H]     cell state leaving step t
    const T* __restrict__ dy, int ld_dy,  // [B, ld_dy] dL/dy of step t, columns [0, H)
    const long long* __restrict__ lengths, int t,  // [B] or nullptr
    const T* __restrict__ dh_rec,  // [B, H]     d_gx of step t+1 (in time) times W_hh; 0 at first
    T* __restrict__ dh_carry,      // [B, H]     in: the rest of dL/dh_out; out: dL/dh_prev - dh_rec
    T* __restrict__ dc_carry,      // [B, H]     in: dL/dc_out; out: dL/dc_prev
    T* __restrict__ d_gx, int ld_g,  // [B, ld_g]  out: gradients of i, f, g, o pre-activations
    int B, int H) {
  Unit me;
  if (!unit_of_thread(B, H, lengths, t, me)) return;
  T dh;
  if (!gradient_leaving(me, dy, ld_dy, dh_rec, dh_carry, d_gx, ld_g, 0, 4, dh)) return;
  const long long u = me.u;
  const T* s = me.at(gates, 4 * H);
  const T i = s[0], f = s[H], g = s[2 * H], o = s[3 * H];
  const T tanh_c = tanh_(c_out[u]);
  const T dc = dc_carry[u] + dh * o * d_tanh(tanh_c);
  T* d = me.at(d_gx, ld_g);
  d[0] = dc * g * d_sigmoid(i);
  d[H] = dc * c_prev[u] * d_sigmoid(f);
  d[2 * H] = dc * i * d_tanh(g);
  d[3 * H] = dh * tanh_c * d_sigmoid(o);
  dh_carry[u] = T(0);
  dc_carry[u] = dc * f;
}
