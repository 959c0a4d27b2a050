// RAdam (Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020) in
// the torch.optim.RAdam formulation. Must match fusedopt.reference.radam.
//
//   g  = -g                          if maximize (before weight decay)
//   g += wd * p                      coupled  |  p *= 1 - lr * wd   decoupled (RAdamW)
//   m  = beta1 * m + (1 - beta1) * g
//   v  = beta2 * v + (1 - beta2) * g * g      (updated on every step, rectified or not)
//   rho_inf = 2 / (1 - beta2) - 1
//   rho_t   = rho_inf - 2 t beta2^t / (1 - beta2^t)
//   rho_t > 5:  r = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
//               p -= lr * r * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)
//   otherwise:  p -= lr / (1 - beta1^t) * m      (the bias-corrected momentum, v unused)
//
// eps is added to the uncorrected sqrt(v) (torch's code and the paper's l_t), unlike Adam's.
// The branch is a property of the step, not of the element: with beta2 in [0.9, 0.9999] steps
// 1-5 are plain momentum steps and step 6 is the first rectified one; with beta2 <= 2/3,
// rho_inf <= 5 and no step is rectified. rho_t is computed on the host in double with torch's
// expression and order, so the branch taken is torch's on every step.
// Slots: param, grad, exp_avg, exp_avg_sq.
#pragma once

#include "adam.h"

namespace fusedopt {
FUSEDOPT_ISA_BEGIN

template <class O>
struct RadamScalars {
  O beta1, one_minus_beta1, beta2, one_minus_beta2;
  O step_size;  // rectified: lr * r * sqrt(1 - beta2^t) / (1 - beta1^t); else lr / (1 - beta1^t)
  O eps;
  O weight_decay;
  O decay_factor;  // 1 - lr * wd (decoupled)
};

template <class St, bool Rectified, bool Maximize, WeightDecay WD>
struct RadamAlgo : Update<St, 4> {
  using O = typename St::compute_t;
  RadamScalars<O> s;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r) const {
    O& p = r[0];
    O g = r[1];
    O& m = r[2];
    O& v = r[3];
    adam_moments<Maximize, WD>(p, g, m, v, s);
    if constexpr (Rectified) {
      p = p - s.step_size * (m / (fo_sqrt(v) + s.eps));
    } else {
      p = p - s.step_size * m;
    }
  }
};

FUSEDOPT_ISA_END

// rho_t of step t, in torch's expression and order (the rectification test is rho_t > 5).
inline double radam_rho(double beta2, int64_t step) {
  const double t = static_cast<double>(step);
  const double rho_inf = 2.0 / (1.0 - beta2) - 1.0;
  return rho_inf - 2.0 * t * std::pow(beta2, t) / (1.0 - std::pow(beta2, t));
}

struct Radam : SpecDefaults {
  static constexpr const char* kName = "radam";
  using Kernel = Radam;
  struct Hyper {
    double lr, beta1, beta2, eps, weight_decay;
    bool decoupled_weight_decay, maximize;
  };
  static constexpr auto kBuffers = kMomentBuffers;
  static constexpr std::array kHypers{
      lr_hyper(1e-3, &Hyper::lr),
      betas_hyper(0.9, 0.999, &Hyper::beta1, &Hyper::beta2, 2),
      real_hyper("eps", 1e-8, &Hyper::eps, kNonNegative, kInvalidEps, 1),
      real_hyper("weight_decay", 0.0, &Hyper::weight_decay, kNonNegative, kInvalidWeightDecay, 3),
      flag_hyper("decoupled_weight_decay", false, &Hyper::decoupled_weight_decay, 4),
      keyword_only(flag_hyper("maximize", false, &Hyper::maximize, 5)),
  };

  template <class St, class Run>
  static void dispatch(const Hyper& h, const StepArgs& a, Run&& run) {
    using O = typename St::compute_t;
    const double t = static_cast<double>(a.step);
    const double bc1 = 1.0 - std::pow(h.beta1, t);
    const double bc2 = 1.0 - std::pow(h.beta2, t);
    const double rho_t = radam_rho(h.beta2, a.step);
    const bool rectified = rho_t > 5.0;
    double step_size = h.lr / bc1;
    if (rectified) {
      const double rho_inf = 2.0 / (1.0 - h.beta2) - 1.0;
      const double r = std::sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf /
                                 ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t));
      step_size = h.lr * r * std::sqrt(bc2) / bc1;
    }
    const RadamScalars<O> s{O(h.beta1),       O(1.0 - h.beta1), O(h.beta2),
                            O(1.0 - h.beta2), O(step_size),     O(h.eps),
                            O(h.weight_decay), O(1.0 - h.lr * h.weight_decay)};
    bool_switch(rectified, [&](auto R) {
      bool_switch(h.maximize, [&](auto M) {
        wd_switch(decay_mode(h.weight_decay, h.decoupled_weight_decay), [&](auto W) {
          run(RadamAlgo<St, decltype(R)::value, decltype(M)::value, decltype(W)::value>{{}, s});
        });
      });
    });
  }
};

}  // namespace fusedopt
