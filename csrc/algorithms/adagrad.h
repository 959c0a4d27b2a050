// Adagrad (Duchi, Hazan & Singer, "Adaptive Subgradient Methods", JMLR 2011), in the
// torch.optim.Adagrad formulation. Must match fusedopt.reference.adagrad.
//
//   g   = -g                              if maximize (before weight decay)
//   g  += wd * p                          coupled weight decay
//   clr = lr / (1 + (t - 1) * lr_decay)
//   sum += g * g                          sum starts at initial_accumulator_value
//   p  -= clr * g / (sqrt(sum) + eps)     eps outside the sqrt (Keras and optax: inside)
//
// Slots: param, grad, sum.
#pragma once

#include "algorithm.h"

namespace fusedopt {
FUSEDOPT_ISA_BEGIN

template <class O>
struct AdagradScalars {
  O clr, weight_decay, eps;
};

template <class O, bool Maximize, WeightDecay WD>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void adagrad_update(O& p, O g, O& sum,
                                                         const AdagradScalars<O>& s) {
  if constexpr (Maximize) g = -g;
  if constexpr (WD == WeightDecay::L2) g = g + s.weight_decay * p;
  sum = sum + g * g;
  p = p - s.clr * (g / (fo_sqrt(sum) + s.eps));
}

template <class St, bool Maximize, WeightDecay WD>
struct AdagradAlgo : Update<St, 3> {
  using O = typename St::compute_t;
  AdagradScalars<O> s;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r) const {
    adagrad_update<O, Maximize, WD>(r[0], r[1], r[2], s);
  }
};

FUSEDOPT_ISA_END

struct Adagrad : SpecDefaults {
  static constexpr const char* kName = "adagrad";
  using Kernel = Adagrad;
  struct Hyper {
    double lr, lr_decay, weight_decay, initial_accumulator_value, eps;
    bool maximize;
  };
  static constexpr std::array kBuffers{
      BufferSpec{"params", nullptr, Role::Param},
      BufferSpec{"grads", nullptr, Role::Grad},
      BufferSpec{"state_sums", "sum", Role::State, nullptr, When::Always,
                 "initial_accumulator_value"},
  };
  static constexpr std::array kHypers{
      lr_hyper(1e-2, &Hyper::lr),
      real_hyper("lr_decay", 0.0, &Hyper::lr_decay, kNonNegative, "Invalid lr_decay value: {}", 1),
      real_hyper("weight_decay", 0.0, &Hyper::weight_decay, kNonNegative, kInvalidWeightDecay, 2),
      classes_only(real_hyper("initial_accumulator_value", 0.0, &Hyper::initial_accumulator_value,
                              kNonNegative, "Invalid initial_accumulator_value value: {}", 3)),
      real_hyper("eps", 1e-10, &Hyper::eps, kNonNegative, kInvalidEps, 4),
      keyword_only(flag_hyper("maximize", false, &Hyper::maximize, 5)),
  };

  template <class St, class Run>
  static void dispatch(const Hyper& h, const StepArgs& a, Run&& run) {
    using O = typename St::compute_t;
    const double clr = h.lr / (1.0 + static_cast<double>(a.step - 1) * h.lr_decay);
    const AdagradScalars<O> s{O(clr), O(h.weight_decay), O(h.eps)};
    bool_switch(h.maximize, [&](auto M) {
      coupled_switch(h.weight_decay, [&](auto W) {
        run(AdagradAlgo<St, decltype(M)::value, decltype(W)::value>{{}, s});
      });
    });
  }
};

}  // namespace fusedopt
