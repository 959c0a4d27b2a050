// Stochastic gradient descent with optional momentum (Polyak, 1964) and Nesterov momentum
// (Sutskever et al., ICML 2013), in the torch.optim.SGD formulation. Batch, mini-batch and
// stochastic gradient descent differ only in how the caller computes g. Must match
// fusedopt.reference.sgd.
//
//   g  = -g                                 if maximize (before weight decay)
//   g += wd * p                             coupled weight decay
//   buf = g                                 first step (a fresh buffer, no dampening)
//   buf = momentum * buf + (1 - dampening) * g        later steps
//   g   = g + momentum * buf   (Nesterov)   |   g = buf   (heavy ball)
//   p  -= lr * g
//
// lr multiplies the whole step (Keras folds lr into the buffer instead, which differs when lr
// changes). Buffers: param, grad[, momentum_buffer].
#pragma once

#include "../common.h"

namespace fusedopt {

struct SgdHyper {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize;
};

FUSEDOPT_ISA_BEGIN

template <class O>
struct SgdScalars {
  O lr, momentum, one_minus_dampening, weight_decay;
};

template <class O>
inline SgdScalars<O> sgd_scalars(const SgdHyper& h) {
  return {O(h.lr), O(h.momentum), O(1.0 - h.dampening), O(h.weight_decay)};
}

template <class O, bool Momentum, bool First, bool Nesterov, bool Maximize, WeightDecay WD>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void sgd_update(O& p, O g, O& buf, const SgdScalars<O>& s) {
  if constexpr (Maximize) g = -g;
  if constexpr (WD == WeightDecay::L2) g = g + s.weight_decay * p;
  if constexpr (Momentum) {
    if constexpr (First) {
      buf = g;
    } else {
      buf = s.momentum * buf + s.one_minus_dampening * g;
    }
    if constexpr (Nesterov) {
      g = g + s.momentum * buf;
    } else {
      g = buf;
    }
  }
  p = p - s.lr * g;
}

template <class S, bool Momentum, bool First, bool Nesterov, bool Maximize, WeightDecay WD>
struct SgdAlgo {
  using storage_t = S;
  using O = opmath_t<S>;
  static constexpr int kBuffers = Momentum ? 3 : 2;
  SgdScalars<O> s;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r) const {
    if constexpr (Momentum) {
      sgd_update<O, true, First, Nesterov, Maximize, WD>(r[0], r[1], r[2], s);
    } else {
      O unused = O(0);
      sgd_update<O, false, false, false, Maximize, WD>(r[0], r[1], unused, s);
    }
  }
};

template <class Run>
void sgd_dispatch(DType dt, const SgdHyper& h, int64_t step, Run&& run) {
  const bool momentum = h.momentum != 0.0;
  dtype_switch(dt, [&](auto sv) {
    using S = decltype(sv);
    bool_switch(h.maximize, [&](auto M) {
      l2_switch(h.weight_decay, [&](auto W) {
        constexpr bool kMax = decltype(M)::value;
        constexpr WeightDecay kWd = decltype(W)::value;
        if (!momentum) {
          run(SgdAlgo<S, false, false, false, kMax, kWd>{sgd_scalars<opmath_t<S>>(h)});
          return;
        }
        bool_switch(step == 1, [&](auto F) {
          bool_switch(h.nesterov, [&](auto N) {
            run(SgdAlgo<S, true, decltype(F)::value, decltype(N)::value, kMax, kWd>{
                sgd_scalars<opmath_t<S>>(h)});
          });
        });
      });
    });
  });
}

FUSEDOPT_ISA_END
}  // namespace fusedopt
