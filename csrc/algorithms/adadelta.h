// Adadelta (Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012), in the
// torch.optim.Adadelta formulation. Must match fusedopt.reference.adadelta.
//
//   g  = -g                                          if maximize (before weight decay)
//   g += wd * p                                      coupled weight decay
//   square_avg = rho * square_avg + (1 - rho) * g * g
//   delta      = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g     eps inside both sqrts
//   acc_delta  = rho * acc_delta + (1 - rho) * delta * delta
//   p -= lr * delta                                  lr = 1 is the paper's rule
//
// delta is evaluated as sqrt((acc_delta + eps) / (square_avg + eps)) * g: the same value with one
// square root instead of two. Buffers: param, grad, square_avg, acc_delta.
#pragma once

#include "../common.h"

namespace fusedopt {

struct AdadeltaHyper {
  double lr, rho, eps, weight_decay;
  bool maximize;
};

FUSEDOPT_ISA_BEGIN

template <class O>
struct AdadeltaScalars {
  O lr, rho, one_minus_rho, eps, weight_decay;
};

template <class O>
inline AdadeltaScalars<O> adadelta_scalars(const AdadeltaHyper& h) {
  return {O(h.lr), O(h.rho), O(1.0 - h.rho), O(h.eps), O(h.weight_decay)};
}

template <class O, bool Maximize, WeightDecay WD>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void adadelta_update(O& p, O g, O& square_avg, O& acc_delta,
                                                          const AdadeltaScalars<O>& s) {
  if constexpr (Maximize) g = -g;
  if constexpr (WD == WeightDecay::L2) g = g + s.weight_decay * p;
  square_avg = s.rho * square_avg + s.one_minus_rho * g * g;
  const O delta = fo_sqrt((acc_delta + s.eps) / (square_avg + s.eps)) * g;
  acc_delta = s.rho * acc_delta + s.one_minus_rho * delta * delta;
  p = p - s.lr * delta;
}

template <class S, bool Maximize, WeightDecay WD>
struct AdadeltaAlgo {
  using storage_t = S;
  using O = opmath_t<S>;
  static constexpr int kBuffers = 4;
  AdadeltaScalars<O> s;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r) const {
    adadelta_update<O, Maximize, WD>(r[0], r[1], r[2], r[3], s);
  }
};

template <class Run>
void adadelta_dispatch(DType dt, const AdadeltaHyper& h, int64_t /*step*/, Run&& run) {
  dtype_switch(dt, [&](auto sv) {
    using S = decltype(sv);
    bool_switch(h.maximize, [&](auto M) {
      l2_switch(h.weight_decay, [&](auto W) {
        run(AdadeltaAlgo<S, decltype(M)::value, decltype(W)::value>{
            adadelta_scalars<opmath_t<S>>(h)});
      });
    });
  });
}

FUSEDOPT_ISA_END
}  // namespace fusedopt
