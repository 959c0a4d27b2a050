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
// in its order: the row and column means as torch's norm(g, dim)^2 / size (the norm rounded,
// then squared and divided), vhat as (row_var col_var) / mean, U as (1 / sqrt(vhat)) g, and p
// as p + (-alpha / den) U with the factor rounded once.
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
// 24 bytes per element factored (torch's single-tensor loop moves about 50: the two norms, the
// full-size vhat, U and the squares), 32 unfactored.
//
// Note [Adafactor's sums]
// Every sum is formed in double from the stored values, in an order fixed by the shapes alone,
// so the results are the same bits for any thread count and on every SIMD path. A factored
// param is cut into tiles (matrix, a block of rows, a block of columns; the sizes depend only on
// R and C: adafactor_tiles). Within a tile a row's terms go to kFactorLanes lanes (lane k takes
// the columns k, k + kFactorLanes, ...; combined by the fixed pairwise tree of lane_sum), a
// column's terms are added row by row, and the norms' terms are added in the lanes row after
// row. Tiles are combined in their order: a row's sum over its column blocks, a column's over
// its row blocks, a norm over all the tiles of the param. An unfactored param is cut into
// chunks of kChunk elements, summed in lanes the same way and combined in chunk order.
#pragma once

#include <cmath>
#include <cstdint>

#include "algorithm.h"

namespace fusedopt {

// The run-time values of a call: torch's hyper-parameters (eps1 resolved).
struct AdafactorHyper {
  double lr, beta2_decay, eps1, eps2, d, weight_decay;
  bool maximize;
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
  int64_t step;  // 1-based, of this update
  bool factored;
  bool is_double;  // the dtype of all its buffers: float64, else float32
};

// The per-param values of a step, in double (Note [Step scalars in double]).
struct AdafactorScalars {
  double w;      // t^beta2_decay
  double alpha;  // max(eps2, rms(p)) rho, once ||p|| is known
  double decay;  // 1 - lr wd
};

inline AdafactorScalars adafactor_scalars(const AdafactorHyper& h, int64_t step) {
  const double t = static_cast<double>(step);
  return {std::pow(t, h.beta2_decay), 0.0, 1.0 - h.lr * h.weight_decay};
}

// The step factor of a param: alpha / den, from ||p||^2 and ||U||^2 (Python's max: NaN drops).
inline double adafactor_factor(const AdafactorHyper& h, int64_t step, int64_t numel, double p2,
                               double u2) {
  const double t = static_cast<double>(step);
  const double rho = std::fmin(h.lr, 1.0 / std::sqrt(t));
  const double root_n = std::sqrt(static_cast<double>(numel));
  const double rms = std::sqrt(p2) / root_n;
  const double alpha = (rms > h.eps2 ? rms : h.eps2) * rho;
  const double ratio = std::sqrt(u2) / (root_n * h.d);
  const double den = ratio > 1.0 ? ratio : 1.0;
  return alpha / den;
}

// torch's min(lr, 1/sqrt(t)) is Python's min: lr when they are equal, and lr is never NaN.

FUSEDOPT_ISA_BEGIN

// The mean torch forms of a row's (or column's) squares: norm(g, dim)^2 / size, where the norm
// is rounded to O, then squared and divided in O.
template <class O>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE O adafactor_mean_square(double sum_sq, int64_t size) {
  const O norm = O(std::sqrt(sum_sq));
  return norm * norm / O(static_cast<double>(size));
}

// The update direction of one element from its variance estimate.
template <bool Maximize, class O>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE O adafactor_direction(O g, O vhat, O eps1_sq) {
  if constexpr (Maximize) g = -g;
  return (O(1) / fo_sqrt(nan_max(vhat, eps1_sq))) * g;
}

// A factored element's variance estimate: (row_var col_var) / max(mean row_var, eps1), the
// divisor already clamped.
template <class O>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE O adafactor_vhat(O row, O col, O mean_clamped) {
  return row * col / mean_clamped;
}

// p after the decay and the step.
template <bool Decay, class O>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE O adafactor_param(O p, O u, O decay, O neg_factor) {
  if constexpr (Decay) p = p * decay;
  return p + neg_factor * u;
}

FUSEDOPT_ISA_END
}  // namespace fusedopt
