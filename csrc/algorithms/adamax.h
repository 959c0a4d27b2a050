// Adamax, the infinity-norm variant of Adam (Kingma & Ba, ICLR 2015, section 7.1), in the
// torch.optim.Adamax formulation. Must match fusedopt.reference.adamax.
//
//   g  = -g                                     if maximize (before weight decay)
//   g += wd * p                                 coupled weight decay
//   m  = beta1 * m + (1 - beta1) * g
//   exp_inf = max(beta2 * exp_inf, |g| + eps)   eps inside the max; a NaN on either side wins
//   p -= (lr / (1 - beta1^t)) * m / exp_inf
//
// Slots: param, grad, exp_avg, exp_inf.
#pragma once

#include "algorithm.h"

namespace fusedopt {
FUSEDOPT_ISA_BEGIN

template <class O>
struct AdamaxScalars {
  O beta1, one_minus_beta1, beta2, clr, eps, weight_decay;
};

template <class O, bool Maximize, WeightDecay WD>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void adamax_update(O& p, O g, O& m, O& exp_inf,
                                                        const AdamaxScalars<O>& s) {
  if constexpr (Maximize) g = -g;
  if constexpr (WD == WeightDecay::L2) g = g + s.weight_decay * p;
  m = s.beta1 * m + s.one_minus_beta1 * g;
  exp_inf = nan_max(s.beta2 * exp_inf, fo_abs(g) + s.eps);
  p = p - s.clr * (m / exp_inf);
}

template <class St, bool Maximize, WeightDecay WD>
struct AdamaxAlgo : Update<St, 4> {
  using O = typename St::compute_t;
  AdamaxScalars<O> s;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r) const {
    adamax_update<O, Maximize, WD>(r[0], r[1], r[2], r[3], s);
  }
};

FUSEDOPT_ISA_END

struct Adamax : SpecDefaults {
  static constexpr const char* kName = "adamax";
  using Kernel = Adamax;
  struct Hyper {
    double lr, beta1, beta2, eps, weight_decay;
    bool maximize;
  };
  static constexpr std::array kBuffers{
      BufferSpec{"params", nullptr, Role::Param},
      BufferSpec{"grads", nullptr, Role::Grad},
      BufferSpec{"exp_avgs", "exp_avg", Role::State},
      BufferSpec{"exp_infs", "exp_inf", Role::State},
  };
  static constexpr std::array kHypers{
      lr_hyper(2e-3, &Hyper::lr),
      betas_hyper(0.9, 0.999, &Hyper::beta1, &Hyper::beta2, 2),
      real_hyper("eps", 1e-8, &Hyper::eps, kNonNegative, kInvalidEps, 1),
      real_hyper("weight_decay", 0.0, &Hyper::weight_decay, kNonNegative, kInvalidWeightDecay, 3),
      keyword_only(flag_hyper("maximize", false, &Hyper::maximize, 4)),
  };

  template <class St, class Run>
  static void dispatch(const Hyper& h, const StepArgs& a, Run&& run) {
    using O = typename St::compute_t;
    const double bc1 = 1.0 - std::pow(h.beta1, static_cast<double>(a.step));
    const AdamaxScalars<O> s{O(h.beta1), O(1.0 - h.beta1), O(h.beta2),
                             O(h.lr / bc1), O(h.eps),       O(h.weight_decay)};
    bool_switch(h.maximize, [&](auto M) {
      coupled_switch(h.weight_decay, [&](auto W) {
        run(AdamaxAlgo<St, decltype(M)::value, decltype(W)::value>{{}, s});
      });
    });
  }
};

}  // namespace fusedopt
