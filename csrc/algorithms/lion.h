// Lion (Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023), the rule of
// the lion-pytorch package (0.2.5: lion_pytorch.Lion, update_fn). Must match
// fusedopt.reference.lion.
//
//   p = p * (1 - lr * wd)            wd / init_lr in place of wd if decoupled_weight_decay
//   c = beta1 * m + (1 - beta1) * g  (not stored)
//   p = p - lr * sgn(c)              sgn(0) = 0, and sgn(NaN) = 0 (torch.sgn)
//   m = beta2 * m + (1 - beta2) * g  (from the old m: two different betas)
//
// No step count, no bias correction, no eps. init_lr is the optimizer's constructor lr
// (lion-pytorch's _init_lr); a call without it (0) takes its own lr, so that the decay of a
// decoupled call is 1 - wd (and none when lr is 0 too). sgn is written (c > 0) - (c < 0), not copysign: DeepSpeed's CPU Lion
// moves a zero-momentum coordinate by lr (copysign of +0), its CUDA Lion by +lr; optax's lion is
// this rule (sign(0) = 0) with weight_decay=1e-3 by default and the decay added to the update.
// Slots: param, grad, exp_avg.
#pragma once

#include "algorithm.h"

namespace fusedopt {
FUSEDOPT_ISA_BEGIN

template <class O>
struct LionScalars {
  O lr, beta1, one_minus_beta1, beta2, one_minus_beta2;
  O decay_factor;  // 1 - lr * wd (decoupled: 1 - lr * (wd / init_lr))
};

template <class St, bool Decay>
struct LionAlgo : Update<St, 3> {
  using O = typename St::compute_t;
  LionScalars<O> s;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r) const {
    O& p = r[0];
    const O g = r[1];
    O& m = r[2];
    if constexpr (Decay) p = p * s.decay_factor;
    const O c = s.beta1 * m + s.one_minus_beta1 * g;
    const O sign = O(c > O(0) ? 1 : 0) - O(c < O(0) ? 1 : 0);
    p = p - s.lr * sign;
    m = s.beta2 * m + s.one_minus_beta2 * g;
  }
};

FUSEDOPT_ISA_END

template <class H>
constexpr HyperSpec<H> closed_range(HyperSpec<H> s) {
  s.range = kUnitClosed;
  return s;
}

struct Lion : SpecDefaults {
  static constexpr const char* kName = "lion";
  using Kernel = Lion;
  struct Hyper {
    double lr, beta1, beta2, weight_decay, init_lr;
    bool use_triton, decoupled_weight_decay;
  };
  static constexpr std::array kBuffers{
      BufferSpec{"params", nullptr, Role::Param},
      BufferSpec{"grads", nullptr, Role::Grad},
      BufferSpec{"exp_avgs", "exp_avg", Role::State},
  };
  static constexpr std::array kHypers{
      lr_hyper(1e-4, &Hyper::lr),
      closed_range(betas_hyper(0.9, 0.99, &Hyper::beta1, &Hyper::beta2, 1)),
      real_hyper("weight_decay", 0.0, &Hyper::weight_decay, kNonNegative, kInvalidWeightDecay, 2),
      classes_only(flag_hyper("use_triton", false, &Hyper::use_triton, 4)),
      flag_hyper("decoupled_weight_decay", false, &Hyper::decoupled_weight_decay, 5),
      set_from(real_hyper("init_lr", 0.0, &Hyper::init_lr, kFiniteNonNegative,
                          "Invalid init_lr value: {}", 3),
               "lr"),
  };

  // 1 - lr * wd, or 1 - lr * (wd / init_lr) (lion-pytorch's order); a decoupled call whose
  // lr and init_lr are both 0 does not decay (lr = 0: nothing moves)
  static double decay_factor(const Hyper& h) {
    if (!h.decoupled_weight_decay) return 1.0 - h.lr * h.weight_decay;
    const double init = h.init_lr > 0.0 ? h.init_lr : h.lr;
    return init > 0.0 ? 1.0 - h.lr * (h.weight_decay / init) : 1.0;
  }

  template <class St, class Run>
  static void dispatch(const Hyper& h, const StepArgs&, Run&& run) {
    using O = typename St::compute_t;
    const LionScalars<O> s{O(h.lr),          O(h.beta1), O(1.0 - h.beta1), O(h.beta2),
                           O(1.0 - h.beta2), O(decay_factor(h))};
    bool_switch(h.weight_decay != 0.0, [&](auto D) {
      run(LionAlgo<St, decltype(D)::value>{{}, s});
    });
  }
};

}  // namespace fusedopt
