// Fused flow-patch embedding on CPU: forward and backward, float32 and float64.
//
//   out[b, :, i, j] = W · patch(x)[b, i, j] + bias + pos[:, i, j]
//
// x (B, C, H, W); weight (D, C, p, p) viewed as W2 (D, K) with K = C·p·p; bias (D) or none; pos (D, gh, gw)
// or none, gh = H/p, gw = W/p, L = gh·gw tokens per image. Output (B, D, gh, gw), or (B, L, D) with
// `flatten`.
//
// The B·L tokens are cut into tiles of kTile consecutive tokens (a tile may span images); each thread
// owns one tile at a time:
//   gather   cols (T x K): row t = the p x p patch of token t, channel-major (c, pi, pj) like W2's columns
//   forward  flatten:   out rows (T x D) = (pos^T + bias) rows, then += cols · W2^T  (BLAS, beta = 1)
//            map:       Yt (D x T) = W2 · cols^T (BLAS), epilogue out[b, d, :] = Yt[d, seg] + pos[d, :] + bias[d]
//            K <= kSmallK: straight into the output on top of pos + bias (no tile, no epilogue pass)
//   backward dY tile (the map layout is copied into a (D x T) tile, the flatten layout is read in place)
//            dbias, dpos: per-thread sums over the tile's tokens (dpos indexed by position l, summed over b)
//            dW2 += dY^T · cols (per-thread accumulator, cols re-gathered from x: no forward state)
//            dcols = dY · W2 (BLAS), scattered back into dx (each pixel belongs to exactly one patch)
//            K <= kSmallK, map layout: the products read each image's dY segment in place (no tile copy)
// Per-thread partial sums of dW, dbias, dpos are added in thread order at the end.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/blas.h"

namespace agentattn {
namespace {

constexpr int64_t kTile = 256;   // tokens per tile
constexpr int64_t kSmallK = 32;  // K = C·p·p up to this: direct loops instead of BLAS in the forward

struct Geo {
  int64_t B, C, H, W, p, gh, gw, L, D, K;
};

// cols[t, :] = patch of global token g0 + t, for t < T.
template <typename T>
void gather(const T* x, const Geo& g, int64_t g0, int64_t Tn, T* cols) {
  const int64_t p = g.p;
  for (int64_t t = 0; t < Tn; ++t) {
    const int64_t tok = g0 + t, b = tok / g.L, l = tok % g.L, i = l / g.gw, j = l % g.gw;
    const T* src = x + ((b * g.C) * g.H + i * p) * g.W + j * p;
    T* dst = cols + t * g.K;
    for (int64_t c = 0; c < g.C; ++c) {
      const T* sc = src + c * g.H * g.W;
      for (int64_t pi = 0; pi < p; ++pi) {
        const T* s = sc + pi * g.W;
#pragma omp simd
        for (int64_t pj = 0; pj < p; ++pj) dst[pj] = s[pj];
        dst += p;
      }
    }
  }
}

// dx[patch of token g0 + t] = dcols[t, :] (each pixel written exactly once over all tokens).
template <typename T>
void scatter(const T* dcols, const Geo& g, int64_t g0, int64_t Tn, T* dx) {
  const int64_t p = g.p;
  for (int64_t t = 0; t < Tn; ++t) {
    const int64_t tok = g0 + t, b = tok / g.L, l = tok % g.L, i = l / g.gw, j = l % g.gw;
    T* dst = dx + ((b * g.C) * g.H + i * p) * g.W + j * p;
    const T* src = dcols + t * g.K;
    for (int64_t c = 0; c < g.C; ++c) {
      T* dc = dst + c * g.H * g.W;
      for (int64_t pi = 0; pi < p; ++pi) {
        T* d = dc + pi * g.W;
#pragma omp simd
        for (int64_t pj = 0; pj < p; ++pj) d[pj] = src[pj];
        src += p;
      }
    }
  }
}

int64_t num_tiles(const Geo& g) { return (g.B * g.L + kTile - 1) / kTile; }

template <typename T>
void forward_impl(const Geo& g, const T* x, const T* w, const T* bias, const T* pos, bool flatten, T* out) {
  const int64_t D = g.D, K = g.K, L = g.L;
  // position + bias table, laid out like one image of the output: (L, D) for flatten, (D, L) otherwise
  std::vector<T> pb(static_cast<size_t>(D * L), T(0));
  for (int64_t d = 0; d < D; ++d) {
    const T bd = bias ? bias[d] : T(0);
    for (int64_t l = 0; l < L; ++l) {
      const T v = (pos ? pos[d * L + l] : T(0)) + bd;
      pb[flatten ? l * D + d : d * L + l] = v;
    }
  }
  // small K (e.g. p = 2, C = 3: K = 12): the product is written straight into the output with the
  // pos + bias table as the initial value (flatten: vectorised loops; map: BLAS per image segment)
  const bool small = K <= kSmallK;
  std::vector<T> wt;  // W2^T (K x D) for the small-K flatten path
  if (small && flatten) {
    wt.resize(static_cast<size_t>(K * D));
    for (int64_t d = 0; d < D; ++d)
      for (int64_t k = 0; k < K; ++k) wt[k * D + d] = w[d * K + k];
  }
  at::parallel_for(0, num_tiles(g), 1, [&](int64_t begin, int64_t end) {
    std::vector<T> cols(static_cast<size_t>(kTile * K));
    std::vector<T> yt(flatten || small ? 0 : static_cast<size_t>(D * kTile));
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t g0 = tile * kTile, Tn = std::min(kTile, g.B * L - g0);
      gather(x, g, g0, Tn, cols.data());
      if (small && flatten) {
        for (int64_t t = 0; t < Tn; ++t) {
          T* o = out + (g0 + t) * D;
          const T* q = pb.data() + ((g0 + t) % L) * D;
          const T* c = cols.data() + t * K;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) o[d] = q[d];
          for (int64_t k = 0; k < K; ++k) {
            const T ck = c[k];
            const T* wr = wt.data() + k * D;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) o[d] += ck * wr[d];
          }
        }
      } else if (small) {
        // each image's output segment is a (D x len) matrix with row stride L: initialise it with
        // pos + bias, then one BLAS call adds W2 · cols_seg^T in place (no tile, no epilogue pass)
        for (int64_t t0 = 0; t0 < Tn;) {
          const int64_t tok = g0 + t0, b = tok / L, l0 = tok % L, len = std::min(Tn - t0, L - l0);
          T* seg = out + b * D * L + l0;
          for (int64_t d = 0; d < D; ++d) std::memcpy(seg + d * L, pb.data() + d * L + l0, sizeof(T) * len);
          blas::gemm_rm<T>(false, true, D, len, K, T(1), w, K, cols.data() + t0 * K, K, T(1), seg, L);
          t0 += len;
        }
      } else if (flatten) {
        T* o = out + g0 * D;  // (B, L, D): the tile's rows are contiguous
        for (int64_t t = 0; t < Tn; ++t) std::memcpy(o + t * D, pb.data() + ((g0 + t) % L) * D, sizeof(T) * D);
        blas::gemm_rm<T>(false, true, Tn, D, K, T(1), cols.data(), K, w, K, T(1), o, D);
      } else {
        blas::gemm_rm<T>(false, true, D, Tn, K, T(1), w, K, cols.data(), K, T(0), yt.data(), Tn);
        // epilogue: one contiguous segment per image the tile touches
        for (int64_t t0 = 0; t0 < Tn;) {
          const int64_t tok = g0 + t0, b = tok / L, l0 = tok % L, len = std::min(Tn - t0, L - l0);
          for (int64_t d = 0; d < D; ++d) {
            T* o = out + (b * D + d) * L + l0;
            const T* y = yt.data() + d * Tn + t0;
            const T* q = pb.data() + d * L + l0;
#pragma omp simd
            for (int64_t e = 0; e < len; ++e) o[e] = y[e] + q[e];
          }
          t0 += len;
        }
      }
    }
  });
}

template <typename T>
void backward_impl(const Geo& g, const T* dout, const T* x, const T* w, bool flatten, T* dx, T* dw, T* dbias, T* dpos) {
  const int64_t D = g.D, K = g.K, L = g.L;
  const int64_t tiles = num_tiles(g);
  const int nthreads = std::max<int>(1, std::min<int64_t>(at::get_num_threads(), tiles));
  // per-thread partial sums (slot = the chunk index of at::parallel_for)
  std::vector<std::vector<T>> pw(nthreads), pbias(nthreads), ppos(nthreads);
  const int64_t grain = (tiles + nthreads - 1) / nthreads;
  const bool sum_pos = dpos != nullptr, sum_bias = dbias != nullptr && dpos == nullptr;
  // small K, map layout: dW and dcols^T by BLAS on each image's dY segment in place (no dY tile copy)
  const bool small_map = !flatten && K <= kSmallK;
  at::parallel_for(0, nthreads, 1, [&](int64_t sb, int64_t se) {
    std::vector<T> cols(static_cast<size_t>(kTile * K));
    std::vector<T> dcols(dx ? static_cast<size_t>(kTile * K) : 0);
    std::vector<T> dyt(flatten || small_map ? 0 : static_cast<size_t>(D * kTile));
    for (int64_t slot = sb; slot < se; ++slot) {
      auto& aw = pw[slot];
      auto& ab = pbias[slot];
      auto& ap = ppos[slot];
      if (dw) aw.assign(static_cast<size_t>(D * K), T(0));
      if (sum_bias) ab.assign(static_cast<size_t>(D), T(0));
      if (sum_pos) ap.assign(static_cast<size_t>(D * L), T(0));
      for (int64_t tile = slot * grain; tile < std::min(tiles, (slot + 1) * grain); ++tile) {
        const int64_t g0 = tile * kTile, Tn = std::min(kTile, g.B * L - g0);
        // dY of the tile; dpos / dbias partial sums from the same contiguous reads. With pos, dbias is
        // the sum of dpos over positions (computed after the reduction), so only one of them is summed.
        const T* dy = nullptr;  // flatten: (Tn x D) rows in place; map: the (D x Tn) tile
        if (flatten) {
          dy = dout + g0 * D;
          for (int64_t t = 0; t < Tn && (sum_pos || sum_bias); ++t) {
            const T* r = dy + t * D;
            T* acc = sum_pos ? ap.data() + ((g0 + t) % L) * D : ab.data();  // flatten: dpos kept as (L, D)
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) acc[d] += r[d];
          }
        } else {
          if (small_map && dw) gather(x, g, g0, Tn, cols.data());
          for (int64_t t0 = 0; t0 < Tn;) {
            const int64_t tok = g0 + t0, b = tok / L, l0 = tok % L, len = std::min(Tn - t0, L - l0);
            for (int64_t d = 0; d < D; ++d) {
              const T* src = dout + (b * D + d) * L + l0;
              if (!small_map && (dw || dx)) {
                std::memcpy(dyt.data() + d * Tn + t0, src, sizeof(T) * len);
              }
              if (sum_pos) {
                T* acc = ap.data() + d * L + l0;
#pragma omp simd
                for (int64_t e = 0; e < len; ++e) acc[e] += src[e];
              } else if (sum_bias) {
                T acc = 0;
#pragma omp simd reduction(+ : acc)
                for (int64_t e = 0; e < len; ++e) acc += src[e];
                ab[d] += acc;
              }
            }
            if (small_map) {  // the image's dY segment is a (D x len) matrix with row stride L: no copy
              const T* seg = dout + b * D * L + l0;
              if (dw)
                blas::gemm_rm<T>(false, false, D, K, len, T(1), seg, L, cols.data() + t0 * K, K, T(1), aw.data(), K);
              if (dx) blas::gemm_rm<T>(true, false, len, K, D, T(1), seg, L, w, K, T(0), dcols.data() + t0 * K, K);
            }
            t0 += len;
          }
          dy = dyt.data();
        }
        if (small_map) {
          if (dx) scatter(dcols.data(), g, g0, Tn, dx);
          continue;
        }
        if (dw) {
          gather(x, g, g0, Tn, cols.data());
          if (flatten)
            blas::gemm_rm<T>(true, false, D, K, Tn, T(1), dy, D, cols.data(), K, T(1), aw.data(), K);
          else
            blas::gemm_rm<T>(false, false, D, K, Tn, T(1), dy, Tn, cols.data(), K, T(1), aw.data(), K);
        }
        if (dx) {
          if (flatten)
            blas::gemm_rm<T>(false, false, Tn, K, D, T(1), dy, D, w, K, T(0), dcols.data(), K);
          else
            blas::gemm_rm<T>(true, false, Tn, K, D, T(1), dy, Tn, w, K, T(0), dcols.data(), K);
          scatter(dcols.data(), g, g0, Tn, dx);
        }
      }
    }
  });
  // fixed-order reduction of the per-thread partials
  auto reduce = [&](std::vector<std::vector<T>>& parts, T* dst, int64_t n) {
    if (!dst) return;
    std::fill(dst, dst + n, T(0));
    for (auto& part : parts) {
      if (part.empty()) continue;
#pragma omp simd
      for (int64_t e = 0; e < n; ++e) dst[e] += part[e];
    }
  };
  reduce(pw, dw, D * K);
  if (sum_bias) reduce(pbias, dbias, D);
  if (sum_pos) {
    reduce(ppos, dpos, D * L);  // flatten: summed in (L, D) order, transposed below
    if (flatten) {
      std::vector<T> tmp(dpos, dpos + D * L);
      for (int64_t l = 0; l < L; ++l)
        for (int64_t d = 0; d < D; ++d) dpos[d * L + l] = tmp[l * D + d];
    }
    if (dbias)
      for (int64_t d = 0; d < D; ++d) {
        T acc = 0;
        for (int64_t l = 0; l < L; ++l) acc += dpos[d * L + l];
        dbias[d] = acc;
      }
  }
}

Geo check(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
          const c10::optional<at::Tensor>& pos, int64_t p) {
  TORCH_CHECK(x.dim() == 4, "flow_patch_embed: x must be (B, C, H, W), got ", x.sizes());
  TORCH_CHECK(p >= 1, "flow_patch_embed: patch_size must be >= 1, got ", p);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(H % p == 0 && W % p == 0, "flow_patch_embed: x spatial size (", H, ", ", W,
              ") must be divisible by patch_size ", p);
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == C && weight.size(2) == p && weight.size(3) == p,
              "flow_patch_embed: weight must be (D, C, p, p) = (D, ", C, ", ", p, ", ", p, "), got ", weight.sizes());
  const int64_t D = weight.size(0), gh = H / p, gw = W / p;
  if (bias.has_value())
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == D, "flow_patch_embed: bias must be (", D, "), got ",
                bias->sizes());
  if (pos.has_value())
    TORCH_CHECK(pos->dim() == 3 && pos->size(0) == D && pos->size(1) == gh && pos->size(2) == gw,
                "flow_patch_embed: pos must be (D, H/p, W/p) = (", D, ", ", gh, ", ", gw, "), got ", pos->sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "flow_patch_embed CPU kernel supports float32 and float64, got ", x.scalar_type());
  for (const at::Tensor* t : {&x, &weight}) {
    TORCH_CHECK(t->device().is_cpu(), "flow_patch_embed CPU kernel got a tensor on ", t->device());
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), "flow_patch_embed: all inputs must share x's dtype ",
                x.scalar_type(), ", got ", t->scalar_type());
  }
  for (const c10::optional<at::Tensor>* t : {&bias, &pos})
    if (t->has_value())
      TORCH_CHECK((*t)->device().is_cpu() && (*t)->scalar_type() == x.scalar_type(),
                  "flow_patch_embed: bias and pos must be CPU tensors of x's dtype ", x.scalar_type());
  return Geo{B, C, H, W, p, gh, gw, gh * gw, D, C * p * p};
}

at::Tensor flow_patch_embed_fwd_cpu(const at::Tensor& x_in, const at::Tensor& weight_in,
                                    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& pos,
                                    int64_t patch_size, bool flatten) {
  const Geo g = check(x_in, weight_in, bias, pos, patch_size);
  auto x = x_in.contiguous(), w = weight_in.contiguous();
  auto b = bias.has_value() ? bias->contiguous() : at::Tensor();
  auto q = pos.has_value() ? pos->contiguous() : at::Tensor();
  auto out = flatten ? at::empty({g.B, g.L, g.D}, x.options()) : at::empty({g.B, g.D, g.gh, g.gw}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "flow_patch_embed_fwd_cpu", [&] {
    forward_impl<scalar_t>(g, x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                           b.defined() ? b.data_ptr<scalar_t>() : nullptr,
                           q.defined() ? q.data_ptr<scalar_t>() : nullptr, flatten, out.data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> flow_patch_embed_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& weight_in,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& pos, int64_t patch_size, bool flatten,
    bool need_dx, bool need_dweight) {
  const Geo g = check(x_in, weight_in, bias, pos, patch_size);
  const std::vector<int64_t> oshape =
      flatten ? std::vector<int64_t>{g.B, g.L, g.D} : std::vector<int64_t>{g.B, g.D, g.gh, g.gw};
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(oshape) && grad_out.scalar_type() == x_in.scalar_type(),
              "flow_patch_embed: grad_out must be ", at::IntArrayRef(oshape), " in ", x_in.scalar_type(), ", got ",
              grad_out.sizes(), " ", grad_out.scalar_type());
  auto x = x_in.contiguous(), w = weight_in.contiguous(), dout = grad_out.contiguous();
  auto opts = x.options();
  at::Tensor dx = need_dx ? at::empty_like(x) : at::empty({0}, opts);
  at::Tensor dw = need_dweight ? at::empty_like(w) : at::empty({0}, opts);
  at::Tensor db = bias.has_value() ? at::empty({g.D}, opts) : at::empty({0}, opts);
  at::Tensor dp = pos.has_value() ? at::empty({g.D, g.gh, g.gw}, opts) : at::empty({0}, opts);
  if (g.B * g.L == 0 || g.D == 0) {  // degenerate: zero gradients
    for (at::Tensor* t : {&dx, &dw, &db, &dp}) t->zero_();
    return {dx, dw, db, dp};
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "flow_patch_embed_bwd_cpu", [&] {
    auto ptr = [](at::Tensor& t) { return t.numel() ? t.data_ptr<scalar_t>() : nullptr; };
    backward_impl<scalar_t>(g, dout.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), flatten,
                            need_dx ? ptr(dx) : nullptr, need_dweight ? ptr(dw) : nullptr,
                            bias.has_value() ? ptr(db) : nullptr, pos.has_value() ? ptr(dp) : nullptr);
  });
  return {dx, dw, db, dp};
}

}  // namespace

TORCH_LIBRARY_IMPL(agentattn, CPU, m) {
  m.impl("flow_patch_embed_fwd", &flow_patch_embed_fwd_cpu);
  m.impl("flow_patch_embed_bwd", &flow_patch_embed_bwd_cpu);
}

}  // namespace agentattn
