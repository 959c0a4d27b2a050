// Adafactor (Shazeer and Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
// ICML 2018) as torch.optim.Adafactor computes it (torch 2.13, _single_tensor_adafactor). Must
// match fusedopt.reference.adafactor. Per param, at its own 1-based step t:
//
//   w     = t^beta2_decay                  (1 at t = 1: the state becomes the first grad's)
//   rho   = min(lr, 1 / sqrt(t))
//   alpha = max(eps2, ||p|| / sqrt(n)) rho     ||p|| before the decay; n the param's elements
//   p    *= 1 - lr wd                      only if wd != 0 (lr, not rho nor alpha)
//   factored (a param of 2 or more dims; the last two, R x C, each leading index a matrix):
//     row_var_i = lerp(row_var_i, sum_j g_ij^2 / C, w)      state shape [..., R, 1]
//     col_var_j = lerp(col_var_j, sum_i g_ij^2 / R, w)      state shape [..., 1, C]
//     vhat_ij   = row_var_i col_var_j / max(mean_i row_var_i, eps1)
//   else (0 or 1 dims):
//     variance  = lerp(variance, g^2, w);  vhat = variance
//   U     = g / sqrt(max(vhat, eps1^2))
//   den   = max(1, ||U|| / (sqrt(n) d))
//   p    -= (alpha / den) U
//
// g is -grad with maximize. lerp is torch's (torch_lerp in algorithm.h). eps1 None is the machine
// epsilon of the group's first param's dtype (torch's loop sets it from that param and keeps it).
// Python's max drops a NaN norm (max(eps2, nan) is eps2, max(1, nan) is 1); a NaN grad still
// reaches p through U. The element operations follow torch's, each rounded to the compute type
// in its order -- the row and column means as torch's norm(g, dim)^2 / size (the norm rounded,
// then squared and divided), an unfactored U as (1 / sqrt(max(v, eps1^2))) g, and p as
// p + (-alpha / den) U with the factor rounded once -- but for a factored U, formed from a factor
// per row and one per column (Note [Adafactor's direction]).
//
// Note [Adafactor's passes]
// The norms and the row and column sums are reductions a plain elementwise kernel cannot make.
// The CPU driver (cpu/factored.h) makes, with n elements of fp32:
//   factored:   A  reads p, g: sum p^2, each row's and each column's sum of g^2     8n B
//               -  the state: both lerps and mean(row_var), O(R + C)
//               B  reads g: sum U^2                                                  4n B
//               C  reads p, g; writes p                                             12n B
//   unfactored: A  reads p, g, v; writes v: sum p^2, sum U^2 (U from the new v)     16n B
//               C  reads p, g, v; writes p                                          16n B
// 24 bytes per element factored, 32 unfactored. torch's loop makes about ten passes over a
// matrix (the two norms, the row and column norms, the full-size vhat and its division, clamp,
// rsqrt and product, the update).
//
// Note [Adafactor in 16 bits]
// A bfloat16 or float16 param (and its grad, of its dtype) is read as float32 (exactly), its
// states are float32, the math is the float32 kernel's, and the new param is rounded once, to
// nearest even, as it is stored: the bits of the float32 kernel run on the same values, the param
// then rounded (tests/test_low_precision.py); or stochastically (Note [Stochastic rounding] in
// storage.h), each element by its bits under the key of (the call's seed, the param's own step,
// its position in the call, the element), as the other algorithms key theirs. eps1 None is the
// machine epsilon of the param's own dtype, as torch's loop sets it (2^-7 for bfloat16). torch
// keeps the states of a 16-bit param in its dtype and does its math there; ours are the float32
// states the other algorithms keep for a 16-bit param by default (a torch state dict loads into
// them exactly). A float32 param may take 16-bit grads, and be written with a 16-bit copy (master
// weights: the float32 master is the param of the kernel, the 16-bit param its copy, rounded as a
// 16-bit param is); a 16-bit param may carry a Kahan compensation, stored as the other
// algorithms store theirs.
//
// Note [Adafactor's sums]
// Every sum is formed in double from the stored values, in an order fixed by the shapes alone,
// so the results are the same bits for any thread count and on every SIMD path. A factored
// param is cut into tiles: a matrix's rows in blocks, each row whole up to kTileCols columns
// (adafactor_tiles in cpu/factored.h; the sizes depend on R and C only). In a tile, the terms of
// a row go to kFactorLanes lanes (lane k takes the columns k, k + kFactorLanes, ... of the tile,
// in order), combined by the fixed pairwise tree of lane_sum: that is the row's partial sum of
// g^2. The terms of the norms (p^2, U^2) go to one set of lanes for the whole tile, row after
// row, combined once. A column's terms are added row by row. Tiles are combined in their order:
// a row's sum over its column blocks, a column's over its row blocks, a norm over all the tiles
// of the param. An unfactored param is cut into chunks of kChunk elements, each summed in lanes
// the same way, and the chunks combined in order. 32 lanes keep enough independent additions
// in flight for the adders (fewer leave them waiting on each other).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "algorithm.h"

namespace fusedopt {

// The run-time values of a call: torch's hyper-parameters (eps1 resolved).
struct AdafactorHyper {
  double lr, beta2_decay, eps1, eps2, d, weight_decay;
  bool maximize;
  // whether a 16-bit param is stored with stochastic rounding, and the call's seed (Note
  // [Adafactor in 16 bits])
  bool stochastic = false;
  uint64_t sr_seed = 0;
};

// One param of a call. A factored param is `batch` matrices of rows x cols (its last two dims);
// an unfactored one is batch = rows = 1, cols = its elements. row_var and col_var are null for
// an unfactored param, variance for a factored one.
struct AdafactorTensor {
  void* param;
  const void* grad;
  void* row_var;
  void* col_var;
  void* variance;
  int64_t batch, rows, cols;
  int64_t step;   // 1-based, of this update
  int64_t index;  // its position in the call (its stochastic rounding's key)
  bool factored;
  // the dtypes of its param and grad (the grad's is the param's, or 16-bit for a float32 param);
  // its states are float64 for a float64 param, else float32 (Note [Adafactor in 16 bits])
  DType dtype, grad_dtype;
  // a float32 param's 16-bit copy, of its grad's dtype, written with it (Note [Param copies]:
  // the 16-bit param of master weights), or a 16-bit param's Kahan compensation (Note [Kahan
  // summation] in storage.h), of its dtype; null where it has none
  void* copy;
  void* comp;
};

// The per-param values of a step, in double (Note [Step scalars in double]).
struct AdafactorScalars {
  double w;      // t^beta2_decay
  double alpha;  // max(eps2, rms(p)) rho, once ||p|| is known
  double decay;  // 1 - lr wd
};

// Lanes of a sum (Note [Adafactor's sums]).
constexpr int kFactorLanes = 32;

// Every function below is compiled into each instruction set's kernels (Note [One namespace per
// instruction set] in common.h).
FUSEDOPT_ISA_BEGIN

inline AdafactorScalars adafactor_scalars(const AdafactorHyper& h, int64_t step) {
  const double t = static_cast<double>(step);
  return {std::pow(t, h.beta2_decay), 0.0, 1.0 - h.lr * h.weight_decay};
}

// A norm as torch's norm() gives it in the dtype O, from the sum of squares (in double): rounded
// to O, and inf where the sum passes O's largest value (torch sums the squares in O: an fp32
// norm past 1.8e19 is inf).
template <class O>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE O adafactor_norm(double sum_sq) {
  return sum_sq > static_cast<double>(std::numeric_limits<O>::max())
             ? std::numeric_limits<O>::infinity()
             : O(std::sqrt(sum_sq));
}

// The step factor of a param: alpha / den, from ||p||^2 and ||U||^2, the norms as torch has
// them (adafactor_norm: an infinite ||p|| makes alpha inf, an infinite ||U|| den inf and the step
// 0, as in torch). Python's max drops a NaN; torch's min(lr, 1/sqrt(t)) is Python's min: lr is
// never NaN.
template <class O>
double adafactor_factor(const AdafactorHyper& h, int64_t step, int64_t numel, double p2,
                        double u2) {
  const double t = static_cast<double>(step);
  const double rho = std::fmin(h.lr, 1.0 / std::sqrt(t));
  const double root_n = std::sqrt(static_cast<double>(numel));
  const double rms = static_cast<double>(adafactor_norm<O>(p2)) / root_n;
  const double alpha = (rms > h.eps2 ? rms : h.eps2) * rho;
  const double ratio = static_cast<double>(adafactor_norm<O>(u2)) / (root_n * h.d);
  const double den = ratio > 1.0 ? ratio : 1.0;
  return alpha / den;
}

// The mean torch forms of a row's (or column's) squares: norm(g, dim)^2 / size, where the norm
// is rounded to O, then squared and divided in O.
template <class O>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE O adafactor_mean_square(double sum_sq, int64_t size) {
  const O norm = adafactor_norm<O>(sum_sq);
  return norm * norm / O(static_cast<double>(size));
}

// Note [Adafactor's direction]
// torch forms U = g rsqrt(max(R_i C_j / mean(R), eps1^2)): a division and a square root per
// element, which make a factored step compute-bound. Since 1 / sqrt(R_i C_j / mean) is
// b_i s_j with b_i = 1 / sqrt(R_i / mean) per row and s_j = 1 / sqrt(C_j) per column (each
// formed in double and rounded once), and the clamp is min(b_i s_j, 1 / eps1), the element
// work is U = g min(b_i s_j, 1 / eps1): two products and a comparison. Rounding: at most
// about 1.5 ulp of the exact value, against torch's chain of four roundings. Edge values as
// torch's: a zero factor gives 1 / eps1 (min(inf, 1 / eps1)), an infinite one 0, and 0 times
// infinity, like any NaN, NaN (the min keeps a NaN). torch's vhat overflows to inf where
// R_i C_j (in the param's dtype) or its quotient by the mean does, and its U is then 0: so is
// ours, where R_i C_j exceeds the row's limit, the dtype's largest value times the mean when the
// mean is under 1 (the test is exact but for quotients within a rounding of that value; huge
// grads, 1e10 in fp32, reach it). An unfactored element is torch's (1 / sqrt(max(v, eps1^2))) g.
template <class O>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE O adafactor_row_factor(O row_var, O mean_clamped) {
  return O(1.0 / std::sqrt(static_cast<double>(row_var) / static_cast<double>(mean_clamped)));
}
template <class O>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE O adafactor_col_factor(O col_var) {
  return O(1.0 / std::sqrt(static_cast<double>(col_var)));
}
// The limit past which R_i C_j / mean overflows in O (Note [Adafactor's direction]).
template <class O>
O adafactor_overflow_limit(O mean_clamped) {
  const double top = static_cast<double>(std::numeric_limits<O>::max());
  return mean_clamped < O(1) ? O(top * static_cast<double>(mean_clamped)) : O(top);
}

template <class O>
struct AdafactorDirection {
  O inv_eps1;  // 1 / eps1 (inf for eps1 = 0)
  O eps1_sq;   // eps1^2
  static AdafactorDirection of(double eps1) { return {O(1.0 / eps1), O(eps1 * eps1)}; }
  // A factored element from its row's b_i, R_i and limit, and its column's s_j and C_j.
  // (Plain selects one after another: the compiler turns each into a vector blend.)
  template <bool Maximize>
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE O factored(O g, O b, O s, O r, O c, O limit) const {
    if constexpr (Maximize) g = -g;
    const O bs = b * s;
    O scale = bs < inv_eps1 ? bs : inv_eps1;
    scale = bs != bs ? bs : scale;         // a NaN stays
    scale = r * c > limit ? O(0) : scale;  // torch's vhat overflows: U = 0 g
    return g * scale;
  }
  // An unfactored element from its variance.
  template <bool Maximize>
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE O plain(O g, O v) const {
    if constexpr (Maximize) g = -g;
    return (O(1) / fo_sqrt(nan_max(v, eps1_sq))) * g;
  }
};

// p after the decay and the step.
template <bool Decay, class O>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE O adafactor_param(O p, O u, O decay, O neg_factor) {
  if constexpr (Decay) p = p * decay;
  return p + neg_factor * u;
}

FUSEDOPT_ISA_END
}  // namespace fusedopt
