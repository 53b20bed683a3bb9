// qmix's native (C++) kernels for the CPU learner, built on first use by qmix.modules.native
// (torch.utils.cpp_extension, -O3 -march=native, cached on disk); the PyTorch path is used
// wherever they are not available. Two of them:
//
// 1. The GRU recurrence (forward and backward through time) as one C++ loop per pass: the same
// computation as qmix/modules/gru.py (_forward and _GRUPacked.backward), same scaled weights and
// packed layout, with each step's element-wise work in one fused, vectorised loop instead of
// seven (forward) or three (backward) tensor operations: the per-step cost becomes one matrix
// product and one pass over the step's rows while they are in cache.
//
// Layout (see gru.py): rows[t] rows per step, packed step after step; the episodes still running
// at step t are the first rows[t] rows of step t-1's block. gi [M, 3H]: input products (the n
// gate's rows doubled, no bias). w_rec [H+1, 3H]: W_hh^T (doubled n columns) with a bias row for
// a constant-1 column of h. b_in [H]: the n gate's input bias (doubled). n = 2 sigmoid(a) - 1.
//
// 2. QMIX's mixing of the agents' utilities once the hypernetworks have run (qmix/modules/
// mixers.py, QMixer.forward): per row, q_tot = sum_e |wf_e| elu(sum_a q_a |w1_ae| + b1_e) + v,
// forward and backward each in one pass over the rows instead of about ten tensor operations.

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// exp(c) for c in [-88, 88] by Cody-Waite range reduction and Cephes' degree-6 polynomial (about
// 1 ulp), written without branches or calls so that the compiler vectorises the loops that use it.
inline float exp_f(float c) {
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  float t = c * 1.44269504088896341f + magic;
  float n = t - magic;  // round(c / ln 2)
  float r = c - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t tb;
  std::memcpy(&tb, &t, 4);
  int32_t sb = (tb - 0x4B400000 + 127) << 23;  // 2^n, n from the low bits of t
  float scale;
  std::memcpy(&scale, &sb, 4);
  return p * scale;
}

// sigmoid(x) = 1 / (1 + exp(-x)). NaN stays NaN (the learner's non-finite check depends on it).
inline float sigmoid_f(float x) {
  float y = -x;
  float c = y != y ? 0.0f : y;
  c = c > 88.0f ? 88.0f : c;
  c = c < -88.0f ? -88.0f : c;
  float s = 1.0f / (1.0f + exp_f(c));
  return x != x ? x : s;
}

// One step of m rows: gi, gh [m, 3H] (gh = W_hh h + biases), h_prev [m, H] (row stride ldp;
// stride 0 over a zero row at the first step) -> h [m, H] (row stride ld) and, if SAVE, the
// gates [m, 4H] = r, z, n, W_hn h + b_hn for the backward pass.
template <bool SAVE>
void step_forward(int64_t m, int64_t H, const float* __restrict gi, const float* __restrict gh,
                  const float* __restrict b_in, const float* __restrict h_prev, int64_t ldp,
                  float* __restrict h, int64_t ld, float* __restrict gates) {
  for (int64_t i = 0; i < m; ++i) {
    const float* __restrict gi_i = gi + i * 3 * H;
    const float* __restrict gh_i = gh + i * 3 * H;
    const float* __restrict hp = h_prev + i * ldp;
    float* __restrict h_i = h + i * ld;
    float* __restrict g = gates + i * 4 * H;
#pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) {
      float r = sigmoid_f(gi_i[j] + gh_i[j]);
      float z = sigmoid_f(gi_i[H + j] + gh_i[H + j]);
      float hn = gh_i[2 * H + j];
      float n = 2.0f * sigmoid_f(gi_i[2 * H + j] + b_in[j] + r * hn) - 1.0f;
      h_i[j] = n + z * (hp[j] - n);  // (1 - z) n + z h
      if constexpr (SAVE) {
        g[j] = r;
        g[H + j] = z;
        g[2 * H + j] = n;
        g[3 * H + j] = hn;
      }
    }
  }
}

// Backward of one step of m rows. dh [m, H]: the gradient of these rows' h, complete (from the
// loss and all later steps); gates [m, 4H]; h_prev as in step_forward. Writes d_gh [m, 3H], the
// gradients of W_hh h + b for r, z and n, and, if PREV, adds dh * z to dh_prev [m, H].
template <bool PREV>
void step_backward(int64_t m, int64_t H, const float* __restrict dh, const float* __restrict gates,
                   const float* __restrict h_prev, int64_t ldp, float* __restrict d_gh,
                   float* __restrict dh_prev) {
  for (int64_t i = 0; i < m; ++i) {
    const float* __restrict d = dh + i * H;
    const float* __restrict g = gates + i * 4 * H;
    const float* __restrict hp = h_prev + i * ldp;
    float* __restrict o = d_gh + i * 3 * H;
    float* __restrict dp = dh_prev + i * H;
#pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) {
      float r = g[j], z = g[H + j], n = g[2 * H + j], hn = g[3 * H + j];
      float fa = d[j] * (1.0f - z) * (1.0f - n * n) * 0.5f;  // gradient of the n gate's input
      o[j] = fa * r * hn * (1.0f - r);
      o[H + j] = d[j] * (hp[j] - n) * z * (1.0f - z);
      o[2 * H + j] = fa * r;
      if constexpr (PREV) dp[j] += d[j] * z;
    }
  }
}

// The n gate's input gradient, dh (1 - z)(1 - n^2) / 2, for all M rows, over d_gh's n columns
// (once W's gradient has been taken from them).
void input_gradient(int64_t M, int64_t H, const float* __restrict dh, const float* __restrict gates,
                    float* __restrict d_gh) {
  for (int64_t i = 0; i < M; ++i) {
    const float* __restrict d = dh + i * H;
    const float* __restrict g = gates + i * 4 * H;
    float* __restrict o = d_gh + i * 3 * H + 2 * H;
#pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) {
      float z = g[H + j], n = g[2 * H + j];
      o[j] = d[j] * (1.0f - z) * (1.0f - n * n) * 0.5f;
    }
  }
}

void check(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(),
              name, " must be a contiguous float32 CPU tensor");
}

// Rows per thread in the element-wise passes: small steps (a few thousand numbers) stay on one
// thread, where handing out work would cost more than it saves.
int64_t rows_grain(int64_t H) { return std::max<int64_t>(1, 16384 / H); }

std::vector<int64_t> offsets(const std::vector<int64_t>& rows) {
  std::vector<int64_t> off(rows.size() + 1, 0);
  for (size_t t = 0; t < rows.size(); ++t) {
    TORCH_CHECK(rows[t] > 0 && (t == 0 || rows[t] <= rows[t - 1]), "rows must be positive and non-increasing");
    off[t + 1] = off[t] + rows[t];
  }
  return off;
}

// The forward loop into out [M, H+1] (last column already 1) and, if gates is defined, the gates.
void forward_loop(const at::Tensor& gi, const at::Tensor& w_rec, const at::Tensor& b_in,
                  const std::vector<int64_t>& rows, const std::vector<int64_t>& off, at::Tensor& out,
                  at::Tensor& gates) {
  at::NoGradGuard no_grad;  // thread-local: this may run on a worker thread of gru_forward_pair
  const int64_t H = w_rec.size(1) / 3, ld = H + 1;
  at::Tensor gh = at::empty({rows[0], 3 * H}, gi.options());
  at::Tensor zeros = at::zeros({H}, gi.options());
  const float* gip = gi.data_ptr<float>();
  const float* bp = b_in.data_ptr<float>();
  float* op = out.data_ptr<float>();
  float* ghp = gh.data_ptr<float>();
  for (size_t t = 0; t < rows.size(); ++t) {
    const int64_t m = rows[t];
    const bool first = t == 0;
    at::Tensor gh_m = gh.narrow(0, 0, m);
    if (first) {
      gh_m.copy_(w_rec.select(0, H).unsqueeze(0).expand({m, 3 * H}));  // h = 0: the biases alone
    } else {
      at::mm_out(gh_m, out.narrow(0, off[t - 1], m), w_rec);
    }
    const float* hp = first ? zeros.data_ptr<float>() : op + off[t - 1] * ld;
    const int64_t ldp = first ? 0 : ld;
    float* ho = op + off[t] * ld;
    const float* gi_t = gip + off[t] * 3 * H;
    float* g_t = gates.defined() ? gates.data_ptr<float>() + off[t] * 4 * H : nullptr;
    at::parallel_for(0, m, rows_grain(H), [&](int64_t a, int64_t b) {
      if (g_t) {
        step_forward<true>(b - a, H, gi_t + a * 3 * H, ghp + a * 3 * H, bp, hp + a * ldp, ldp, ho + a * ld, ld,
                           g_t + a * 4 * H);
      } else {
        step_forward<false>(b - a, H, gi_t + a * 3 * H, ghp + a * 3 * H, bp, hp + a * ldp, ldp, ho + a * ld, ld,
                            nullptr);
      }
    });
  }
}

std::vector<at::Tensor> prepare(const at::Tensor& gi, const at::Tensor& w_rec, const at::Tensor& b_in,
                                const std::vector<int64_t>& off, bool save) {
  check(gi, "gi");
  check(w_rec, "w_rec");
  check(b_in, "b_in");
  const int64_t M = gi.size(0), H = w_rec.size(1) / 3;
  TORCH_CHECK(off.back() == M && gi.size(1) == 3 * H && w_rec.size(0) == H + 1 && b_in.numel() == H,
              "gru_forward: inconsistent shapes");
  at::Tensor out = at::empty({M, H + 1}, gi.options());
  out.select(1, H).fill_(1);
  return {out, save ? at::empty({M, 4 * H}, gi.options()) : at::Tensor()};
}

}  // namespace

// -> out [M, H+1] (h of every row, last column 1) and, if save, gates [M, 4H] (else undefined).
std::vector<at::Tensor> gru_forward(const at::Tensor& gi, const at::Tensor& w_rec, const at::Tensor& b_in,
                                    const std::vector<int64_t>& rows, bool save) {
  at::NoGradGuard no_grad;
  const std::vector<int64_t> off = offsets(rows);
  std::vector<at::Tensor> res = prepare(gi, w_rec, b_in, off, save);
  if (!rows.empty()) forward_loop(gi, w_rec, b_in, rows, off, res[0], res[1]);
  return res;
}

// Two networks over the same packed episodes (the learner's online and target agents), each
// loop on its own thread where two are available: out_a, gates_a (if save_a), out_b.
std::vector<at::Tensor> gru_forward_pair(const at::Tensor& gi_a, const at::Tensor& w_a, const at::Tensor& b_a,
                                         bool save_a, const at::Tensor& gi_b, const at::Tensor& w_b,
                                         const at::Tensor& b_b, const std::vector<int64_t>& rows) {
  at::NoGradGuard no_grad;
  const std::vector<int64_t> off = offsets(rows);
  std::vector<at::Tensor> a = prepare(gi_a, w_a, b_a, off, save_a);
  std::vector<at::Tensor> b = prepare(gi_b, w_b, b_b, off, false);
  if (!rows.empty()) {
    at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        if (k == 0) forward_loop(gi_a, w_a, b_a, rows, off, a[0], a[1]);
        else forward_loop(gi_b, w_b, b_b, rows, off, b[0], b[1]);
      }
    });
  }
  return {a[0], a[1], b[0]};
}

// Gradients from d_out [M, H] (the loss's gradient of h) -> d_gi [M, 3H], d_w_rec [H+1, 3H], d_b_in [H].
std::vector<at::Tensor> gru_backward(const at::Tensor& d_out, const at::Tensor& w_rec, const at::Tensor& out,
                                     const at::Tensor& gates, const std::vector<int64_t>& rows) {
  check(w_rec, "w_rec");
  check(out, "out");
  check(gates, "gates");
  const int64_t M = out.size(0), H = w_rec.size(1) / 3, ld = H + 1;
  const std::vector<int64_t> off = offsets(rows);
  TORCH_CHECK(off.back() == M && d_out.size(0) == M && d_out.size(1) == H, "gru_backward: inconsistent shapes");
  at::NoGradGuard no_grad;
  at::Tensor dh = d_out.contiguous().to(at::kFloat).clone();  // grows into the gradient through all later steps
  at::Tensor d_gh = at::empty({M, 3 * H}, out.options());
  if (M == 0) return {d_gh, at::zeros_like(w_rec), at::zeros({H}, out.options())};
  at::Tensor w = w_rec.narrow(0, 0, H).t();  // W_hh [3H, H]
  at::Tensor zeros = at::zeros({H}, out.options());
  float* dhp = dh.data_ptr<float>();
  const float* gp = gates.data_ptr<float>();
  const float* op = out.data_ptr<float>();
  float* dgp = d_gh.data_ptr<float>();
  for (int64_t t = static_cast<int64_t>(rows.size()) - 1; t >= 0; --t) {
    const int64_t m = rows[t];
    const float* dh_t = dhp + off[t] * H;
    const float* g_t = gp + off[t] * 4 * H;
    float* dg_t = dgp + off[t] * 3 * H;
    if (t == 0) {
      const float* z0 = zeros.data_ptr<float>();
      at::parallel_for(0, m, rows_grain(H), [&](int64_t a, int64_t b) {
        step_backward<false>(b - a, H, dh_t + a * H, g_t + a * 4 * H, z0, 0, dg_t + a * 3 * H, nullptr);
      });
    } else {
      const int64_t prev = off[t - 1];
      const float* hp = op + prev * ld;
      float* dh_prev = dhp + prev * H;
      at::parallel_for(0, m, rows_grain(H), [&](int64_t a, int64_t b) {
        step_backward<true>(b - a, H, dh_t + a * H, g_t + a * 4 * H, hp + a * ld, ld, dg_t + a * 3 * H,
                            dh_prev + a * H);
      });
      dh.narrow(0, prev, m).addmm_(d_gh.narrow(0, off[t], m), w);
    }
  }
  // Every row's h_prev (zeros and the constant 1 at the first step): W's gradient is one product.
  at::Tensor h_prev = at::empty({M, ld}, out.options());
  h_prev.narrow(0, 0, rows[0]).zero_();
  h_prev.narrow(0, 0, rows[0]).select(1, H).fill_(1);
  float* hpp = h_prev.data_ptr<float>();
  for (size_t t = 1; t < rows.size(); ++t) {
    std::memcpy(hpp + off[t] * ld, op + off[t - 1] * ld, sizeof(float) * rows[t] * ld);
  }
  at::Tensor d_w = at::mm(h_prev.t(), d_gh);
  at::parallel_for(0, M, rows_grain(H), [&](int64_t a, int64_t b) {  // d_gh becomes the gradient of gi
    input_gradient(b - a, H, dhp + a * H, gp + a * 4 * H, dgp + a * 3 * H);
  });
  at::Tensor d_b_in = d_gh.narrow(1, 2 * H, H).sum(0);
  return {d_gh, d_w, d_b_in};
}

// ------------------------------------------------------------------------------ QMIX mixing
namespace {

// elu(x) = x for x > 0, exp(x) - 1 otherwise; NaN stays NaN. ``ex`` receives exp(min(x, 0)).
inline float elu_f(float x, float& ex) {
  float c = x != x ? 0.0f : x;
  c = c > 0.0f ? 0.0f : c;
  c = c < -88.0f ? -88.0f : c;
  ex = exp_f(c);
  float y = x > 0.0f ? x : ex - 1.0f;
  return x != x ? x : y;
}

// sign as torch.sgn: 0 at 0, NaN for NaN (abs's gradient)
inline float sgn_f(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x); }

// x[0] + ... + x[E-1] in eight interleaved partial sums: vector additions instead of E dependent ones.
inline float sum_f(const float* __restrict x, int64_t E) {
  float part[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  int64_t e = 0;
  for (; e + 8 <= E; e += 8)
    for (int k = 0; k < 8; ++k) part[k] += x[e + k];
  for (int k = 0; e < E; ++e, ++k) part[k] += x[e];
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

// pre[e] = sum_a q[a] |w1[a E + e]| + b1[e], summed over the agents first as the PyTorch path does.
inline void mixing_input(int64_t n, int64_t E, const float* __restrict q, int64_t sq,
                         const float* __restrict w1, const float* __restrict b1, float* __restrict pre) {
  for (int64_t e = 0; e < E; ++e) pre[e] = q[0] * std::fabs(w1[e]);
  for (int64_t a = 1; a < n; ++a) {
    const float qa = q[a * sq];
    const float* __restrict w = w1 + a * E;
    for (int64_t e = 0; e < E; ++e) pre[e] += qa * std::fabs(w[e]);
  }
  for (int64_t e = 0; e < E; ++e) pre[e] += b1[e];
}

void check_mixing(const at::Tensor& qs, const std::vector<at::Tensor>& rows, int64_t E) {
  TORCH_CHECK(qs.dim() == 2 && qs.scalar_type() == at::kFloat && qs.device().is_cpu(), "qs: [N, n] float32 on the CPU");
  const int64_t N = qs.size(0), n = qs.size(1);
  TORCH_CHECK(n > 0, "no agents");
  for (const at::Tensor& t : rows) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == N && t.stride(1) == 1 && t.scalar_type() == at::kFloat &&
                    t.device().is_cpu(),
                "mixing inputs: [N, k] float32 CPU arrays with unit column stride");
  }
  TORCH_CHECK(rows[0].size(1) == n * E, "w1: [N, n * E]");
}

}  // namespace

// q_tot [N] from qs [N, n] and the hypernetworks' outputs w1 [N, n E], b1 [N, E], wf [N, E],
// v [N, 1] (before abs; any row strides).
at::Tensor mix_forward(const at::Tensor& qs, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& wf,
                       const at::Tensor& v) {
  const int64_t N = qs.size(0), n = qs.size(1), E = b1.size(1);
  check_mixing(qs, {w1, b1, wf, v}, E);
  at::Tensor out = at::empty({N}, qs.options());
  const float *q = qs.data_ptr<float>(), *w1p = w1.data_ptr<float>(), *b1p = b1.data_ptr<float>(),
              *wfp = wf.data_ptr<float>(), *vp = v.data_ptr<float>();
  const int64_t lq = qs.stride(0), sq = qs.stride(1), l1 = w1.stride(0), lb = b1.stride(0), lf = wf.stride(0),
                lv = v.stride(0);
  float* o = out.data_ptr<float>();
  at::parallel_for(0, N, 256, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(2 * E);
    float* pre = buf.data();
    float* term = pre + E;
    for (int64_t i = begin; i < end; ++i) {
      mixing_input(n, E, q + i * lq, sq, w1p + i * l1, b1p + i * lb, pre);
      const float* __restrict f = wfp + i * lf;
      for (int64_t e = 0; e < E; ++e) {
        float ex;
        term[e] = elu_f(pre[e], ex) * std::fabs(f[e]);
      }
      o[i] = sum_f(term, E) + vp[i * lv];
    }
  });
  return out;
}

// Gradients of mix_forward for the upstream gradient g [N]: d_qs [N, n], d_w1 [N, n E],
// d_b1 [N, E], d_wf [N, E] (that of v is g itself). The hidden layer is recomputed, not stored.
std::vector<at::Tensor> mix_backward(const at::Tensor& g, const at::Tensor& qs, const at::Tensor& w1,
                                     const at::Tensor& b1, const at::Tensor& wf) {
  const int64_t N = qs.size(0), n = qs.size(1), E = b1.size(1);
  check_mixing(qs, {w1, b1, wf}, E);
  TORCH_CHECK(g.dim() == 1 && g.size(0) == N && g.scalar_type() == at::kFloat, "g: [N] float32");
  at::Tensor d_q = at::empty({N, n}, qs.options()), d_w1 = at::empty({N, n * E}, qs.options()),
             d_b1 = at::empty({N, E}, qs.options()), d_wf = at::empty({N, E}, qs.options());
  const float *gp = g.data_ptr<float>(), *q = qs.data_ptr<float>(), *w1p = w1.data_ptr<float>(),
              *b1p = b1.data_ptr<float>(), *wfp = wf.data_ptr<float>();
  const int64_t lg = g.stride(0), lq = qs.stride(0), sq = qs.stride(1), l1 = w1.stride(0), lb = b1.stride(0),
                lf = wf.stride(0);
  float *dq = d_q.data_ptr<float>(), *dw1 = d_w1.data_ptr<float>(), *db1 = d_b1.data_ptr<float>(),
        *dwf = d_wf.data_ptr<float>();
  at::parallel_for(0, N, 256, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(2 * E);
    float* pre = buf.data();
    float* term = pre + E;
    for (int64_t i = begin; i < end; ++i) {
      const float* __restrict qi = q + i * lq;
      const float* __restrict w = w1p + i * l1;
      mixing_input(n, E, qi, sq, w, b1p + i * lb, pre);
      const float gi = gp[i * lg];
      const float* __restrict f = wfp + i * lf;
      float* __restrict d_pre = db1 + i * E;  // the gradient of b1 is that of the hidden layer's input
      float* __restrict d_f = dwf + i * E;
      for (int64_t e = 0; e < E; ++e) {
        const float x = pre[e];
        float ex;
        const float h = elu_f(x, ex);
        d_f[e] = gi * h * sgn_f(f[e]);
        const float dh = gi * std::fabs(f[e]);
        d_pre[e] = x > 0.0f ? dh : dh * (x != x ? x : ex);  // elu'(x) = exp(x) for x <= 0
      }
      for (int64_t a = 0; a < n; ++a) {
        const float qa = qi[a * sq];
        const float* __restrict wa = w + a * E;
        float* __restrict dwa = dw1 + (i * n + a) * E;
        for (int64_t e = 0; e < E; ++e) {
          dwa[e] = d_pre[e] * qa * sgn_f(wa[e]);
          term[e] = d_pre[e] * std::fabs(wa[e]);
        }
        dq[i * n + a] = sum_f(term, E);
      }
    }
  });
  return {d_q, d_w1, d_b1, d_wf};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gru_forward", &gru_forward, "GRU recurrence over packed episodes (forward)");
  m.def("gru_forward_pair", &gru_forward_pair, "two GRU recurrences over the same packed episodes");
  m.def("gru_backward", &gru_backward, "GRU recurrence over packed episodes (backward)");
  m.def("mix_forward", &mix_forward, "QMIX mixing of the agents' utilities (forward)");
  m.def("mix_backward", &mix_backward, "QMIX mixing of the agents' utilities (backward)");
}
