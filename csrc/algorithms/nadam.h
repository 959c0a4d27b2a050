// NAdam (Dozat, "Incorporating Nesterov Momentum into Adam", ICLR workshop 2016) with the
// momentum schedule mu_t, in the torch.optim.NAdam formulation (per-parameter mu_product).
// Must match fusedopt.reference.nadam.
//
//   g  = -g                                     if maximize (before weight decay)
//   g += wd * p          coupled  |  p *= 1 - lr * wd   decoupled (NAdamW)
//   mu_t    = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay))
//   mu_next = beta1 * (1 - 0.5 * 0.96^((t + 1) * momentum_decay))
//   mu_product_t = mu_product_{t-1} * mu_t       (host side, in double; 1 before the first step)
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g * g
//   denom = sqrt(v / (1 - beta2^t)) + eps        the bias correction is inside the sqrt here
//   p -= lr * (1 - mu_t) / (1 - mu_product_t) * g / denom
//   p -= lr * mu_next / (1 - mu_product_t * mu_next) * m / denom
//
// Keras uses 0.96^t (no momentum_decay) and one global product: not this.
//
// Evaluated in the order of Note [Adam's efficient order] (adam.h): with c = sqrt(1 - beta2^t),
//   p -= (c * coef_g * g + c * coef_m * m) / (sqrt(v) + eps * c),
// the same update with one division instead of three.
// Buffers: param, grad, exp_avg, exp_avg_sq.
#pragma once

#include "../common.h"

namespace fusedopt {

struct NadamHyper {
  double lr, beta1, beta2, eps, weight_decay, momentum_decay;
  bool decoupled_weight_decay, maximize;
};

FUSEDOPT_ISA_BEGIN

template <class O>
struct NadamScalars {
  O beta1, one_minus_beta1, beta2, one_minus_beta2;
  O coef_g;   // sqrt(1 - beta2^t) * lr * (1 - mu_t) / (1 - mu_product_t)
  O coef_m;   // sqrt(1 - beta2^t) * lr * mu_next / (1 - mu_product_t * mu_next)
  O eps;      // eps * sqrt(1 - beta2^t)
  O weight_decay, decay_factor;
};

inline double nadam_mu(const NadamHyper& h, int64_t t) {
  return h.beta1 * (1.0 - 0.5 * std::pow(0.96, static_cast<double>(t) * h.momentum_decay));
}

// mu_product_prev is the product of mu over steps 1..t-1; the new product is returned through
// mu_product_new so the caller can keep it as state.
template <class O>
inline NadamScalars<O> nadam_scalars(const NadamHyper& h, int64_t step, double mu_product_prev,
                                     double* mu_product_new) {
  const double mu = nadam_mu(h, step);
  const double mu_next = nadam_mu(h, step + 1);
  const double mu_product = mu_product_prev * mu;
  *mu_product_new = mu_product;
  const double c = std::sqrt(1.0 - std::pow(h.beta2, static_cast<double>(step)));
  return {O(h.beta1),
          O(1.0 - h.beta1),
          O(h.beta2),
          O(1.0 - h.beta2),
          O(c * h.lr * (1.0 - mu) / (1.0 - mu_product)),
          O(c * h.lr * mu_next / (1.0 - mu_product * mu_next)),
          O(h.eps * c),
          O(h.weight_decay),
          O(1.0 - h.lr * h.weight_decay)};
}

template <class O, bool Maximize, WeightDecay WD>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void nadam_update(O& p, O g, O& m, O& v,
                                                       const NadamScalars<O>& s) {
  if constexpr (Maximize) g = -g;
  if constexpr (WD == WeightDecay::L2) g = g + s.weight_decay * p;
  if constexpr (WD == WeightDecay::Decoupled) p = p * s.decay_factor;
  m = s.beta1 * m + s.one_minus_beta1 * g;
  v = s.beta2 * v + s.one_minus_beta2 * g * g;
  p = p - (s.coef_g * g + s.coef_m * m) / (fo_sqrt(v) + s.eps);
}

template <class S, bool Maximize, WeightDecay WD>
struct NadamAlgo {
  using storage_t = S;
  using O = opmath_t<S>;
  static constexpr int kBuffers = 4;
  NadamScalars<O> s;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r) const {
    nadam_update<O, Maximize, WD>(r[0], r[1], r[2], r[3], s);
  }
};

template <class Run>
void nadam_dispatch(DType dt, const NadamHyper& h, int64_t step, double mu_product_prev,
                    double* mu_product_new, Run&& run) {
  const WeightDecay wd = h.decoupled_weight_decay
                             ? (h.weight_decay != 0.0 ? WeightDecay::Decoupled : WeightDecay::None)
                             : coupled_decay(h.weight_decay);
  dtype_switch(dt, [&](auto sv) {
    using S = decltype(sv);
    const auto s = nadam_scalars<opmath_t<S>>(h, step, mu_product_prev, mu_product_new);
    bool_switch(h.maximize, [&](auto M) {
      wd_switch(wd, [&](auto W) {
        run(NadamAlgo<S, decltype(M)::value, decltype(W)::value>{s});
      });
    });
  });
}

FUSEDOPT_ISA_END
}  // namespace fusedopt
