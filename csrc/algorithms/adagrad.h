// Adagrad (Duchi, Hazan & Singer, "Adaptive Subgradient Methods", JMLR 2011), in the
// torch.optim.Adagrad formulation. Must match fusedopt.reference.adagrad.
//
//   g   = -g                              if maximize (before weight decay)
//   g  += wd * p                          coupled weight decay
//   clr = lr / (1 + (t - 1) * lr_decay)
//   sum += g * g                          sum starts at initial_accumulator_value (the caller's)
//   p  -= clr * g / (sqrt(sum) + eps)     eps outside the sqrt (Keras and optax: inside)
//
// Buffers: param, grad, sum.
#pragma once

#include "../common.h"

namespace fusedopt {

struct AdagradHyper {
  double lr, lr_decay, weight_decay, eps;
  bool maximize;
};

FUSEDOPT_ISA_BEGIN

template <class O>
struct AdagradScalars {
  O clr, weight_decay, eps;
};

template <class O>
inline AdagradScalars<O> adagrad_scalars(const AdagradHyper& h, int64_t step) {
  const double clr = h.lr / (1.0 + static_cast<double>(step - 1) * h.lr_decay);
  return {O(clr), O(h.weight_decay), O(h.eps)};
}

template <class O, bool Maximize, WeightDecay WD>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void adagrad_update(O& p, O g, O& sum,
                                                         const AdagradScalars<O>& s) {
  if constexpr (Maximize) g = -g;
  if constexpr (WD == WeightDecay::L2) g = g + s.weight_decay * p;
  sum = sum + g * g;
  p = p - s.clr * (g / (fo_sqrt(sum) + s.eps));
}

template <class S, bool Maximize, WeightDecay WD>
struct AdagradAlgo {
  using storage_t = S;
  using O = opmath_t<S>;
  static constexpr int kBuffers = 3;
  AdagradScalars<O> s;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r) const {
    adagrad_update<O, Maximize, WD>(r[0], r[1], r[2], s);
  }
};

template <class Run>
void adagrad_dispatch(DType dt, const AdagradHyper& h, int64_t step, Run&& run) {
  dtype_switch(dt, [&](auto sv) {
    using S = decltype(sv);
    bool_switch(h.maximize, [&](auto M) {
      l2_switch(h.weight_decay, [&](auto W) {
        run(AdagradAlgo<S, decltype(M)::value, decltype(W)::value>{
            adagrad_scalars<opmath_t<S>>(h, step)});
      });
    });
  });
}

FUSEDOPT_ISA_END
}  // namespace fusedopt
