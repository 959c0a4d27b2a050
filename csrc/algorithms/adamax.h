// Adamax, the infinity-norm variant of Adam (Kingma & Ba, ICLR 2015, section 7.1), in the
// torch.optim.Adamax formulation. Must match fusedopt.reference.adamax.
//
//   g  = -g                                     if maximize (before weight decay)
//   g += wd * p                                 coupled weight decay
//   m  = beta1 * m + (1 - beta1) * g
//   exp_inf = max(beta2 * exp_inf, |g| + eps)   eps inside the max; a NaN on either side wins
//   p -= (lr / (1 - beta1^t)) * m / exp_inf
//
// Buffers: param, grad, exp_avg, exp_inf.
#pragma once

#include "../common.h"

namespace fusedopt {

struct AdamaxHyper {
  double lr, beta1, beta2, eps, weight_decay;
  bool maximize;
};

FUSEDOPT_ISA_BEGIN

template <class O>
struct AdamaxScalars {
  O beta1, one_minus_beta1, beta2, clr, eps, weight_decay;
};

template <class O>
inline AdamaxScalars<O> adamax_scalars(const AdamaxHyper& h, int64_t step) {
  const double bc1 = 1.0 - std::pow(h.beta1, static_cast<double>(step));
  return {O(h.beta1), O(1.0 - h.beta1), O(h.beta2), O(h.lr / bc1), O(h.eps), O(h.weight_decay)};
}

template <class O, bool Maximize, WeightDecay WD>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void adamax_update(O& p, O g, O& m, O& exp_inf,
                                                        const AdamaxScalars<O>& s) {
  if constexpr (Maximize) g = -g;
  if constexpr (WD == WeightDecay::L2) g = g + s.weight_decay * p;
  m = s.beta1 * m + s.one_minus_beta1 * g;
  exp_inf = nan_max(s.beta2 * exp_inf, fo_abs(g) + s.eps);
  p = p - s.clr * (m / exp_inf);
}

template <class S, bool Maximize, WeightDecay WD>
struct AdamaxAlgo {
  using storage_t = S;
  using O = opmath_t<S>;
  static constexpr int kBuffers = 4;
  AdamaxScalars<O> s;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r) const {
    adamax_update<O, Maximize, WD>(r[0], r[1], r[2], r[3], s);
  }
};

template <class Run>
void adamax_dispatch(DType dt, const AdamaxHyper& h, int64_t step, Run&& run) {
  dtype_switch(dt, [&](auto sv) {
    using S = decltype(sv);
    bool_switch(h.maximize, [&](auto M) {
      l2_switch(h.weight_decay, [&](auto W) {
        run(AdamaxAlgo<S, decltype(M)::value, decltype(W)::value>{
            adamax_scalars<opmath_t<S>>(h, step)});
      });
    });
  });
}

FUSEDOPT_ISA_END
}  // namespace fusedopt
