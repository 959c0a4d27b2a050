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
// square root instead of two. Slots: param, grad, square_avg, acc_delta.
#pragma once

#include "algorithm.h"

namespace fusedopt {
FUSEDOPT_ISA_BEGIN

template <class O>
struct AdadeltaScalars {
  O lr, rho, one_minus_rho, eps, weight_decay;
};

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

template <class St, bool Maximize, WeightDecay WD>
struct AdadeltaAlgo : Update<St, 4> {
  using O = typename St::compute_t;
  AdadeltaScalars<O> s;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r) const {
    adadelta_update<O, Maximize, WD>(r[0], r[1], r[2], r[3], s);
  }
};

FUSEDOPT_ISA_END

struct Adadelta : SpecDefaults {
  static constexpr const char* kName = "adadelta";
  using Kernel = Adadelta;
  struct Hyper {
    double lr, rho, eps, weight_decay;
    bool maximize;
  };
  static constexpr std::array kBuffers{
      BufferSpec{"params", nullptr, Role::Param},
      BufferSpec{"grads", nullptr, Role::Grad},
      BufferSpec{"square_avgs", "square_avg", Role::State},
      BufferSpec{"acc_deltas", "acc_delta", Role::State},
  };
  static constexpr std::array kHypers{
      lr_hyper(1.0, &Hyper::lr),
      real_hyper("rho", 0.9, &Hyper::rho, kUnitClosed, "Invalid rho value: {}", 1),
      real_hyper("eps", 1e-6, &Hyper::eps, kNonNegative, kInvalidEps, 2),
      real_hyper("weight_decay", 0.0, &Hyper::weight_decay, kNonNegative, kInvalidWeightDecay, 3),
      keyword_only(flag_hyper("maximize", false, &Hyper::maximize, 4)),
  };

  template <class St, class Run>
  static void dispatch(const Hyper& h, const StepArgs&, Run&& run) {
    using O = typename St::compute_t;
    const AdadeltaScalars<O> s{O(h.lr), O(h.rho), O(1.0 - h.rho), O(h.eps), O(h.weight_decay)};
    bool_switch(h.maximize, [&](auto M) {
      coupled_switch(h.weight_decay, [&](auto W) {
        run(AdadeltaAlgo<St, decltype(M)::value, decltype(W)::value>{{}, s});
      });
    });
  }
};

}  // namespace fusedopt
