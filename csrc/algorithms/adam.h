// Adam (Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015), with AMSGrad
// (Reddi et al., ICLR 2018) and AdamW's decoupled weight decay (Loshchilov & Hutter, ICLR 2019),
// in the torch.optim.Adam / AdamW formulation. Must match fusedopt.reference.adam and
// fusedopt.reference.adamw.
//
//   g  = -g                          if maximize (before weight decay)
//   g += wd * p                      coupled (Adam)      | p *= 1 - lr * wd   decoupled (AdamW)
//   m  = beta1 * m + (1 - beta1) * g
//   v  = beta2 * v + (1 - beta2) * g * g
//   vmax = max(vmax, v)              AMSGrad: max over the uncorrected v, used in place of v
//   p -= (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//
// eps is outside the sqrt and added after bias correction, as torch does (Keras' "epsilon hat" is
// eps * sqrt(1 - beta2^t)). Slots: param, grad, exp_avg, exp_avg_sq[, max_exp_avg_sq].
//
// Note [Adam's efficient order]: the last line is evaluated as the paper's section 2 suggests,
//   p -= (lr * sqrt(1 - beta2^t) / (1 - beta1^t)) * m / (sqrt(v) + eps * sqrt(1 - beta2^t)),
// algebraically the same update with torch's eps, but one division per element instead of two
// (in cache, divisions and square roots bound the speed). Only the rounding differs from torch's
// order, by a few ulp, as torch's own CPU and CUDA kernels differ.
#pragma once

#include "algorithm.h"

namespace fusedopt {
FUSEDOPT_ISA_BEGIN

template <class O>
struct AdamScalars {
  O beta1, one_minus_beta1, beta2, one_minus_beta2;
  O step_size;     // lr * sqrt(1 - beta2^t) / (1 - beta1^t)   Note [Adam's efficient order]
  O eps;           // eps * sqrt(1 - beta2^t)
  O weight_decay;
  O decay_factor;  // 1 - lr * wd (decoupled)
};

template <class O, class H>
inline AdamScalars<O> adam_scalars(const H& h, int64_t step) {
  const double t = static_cast<double>(step);
  const double bc1 = 1.0 - std::pow(h.beta1, t);
  const double bc2 = 1.0 - std::pow(h.beta2, t);
  const double bc2_sqrt = std::sqrt(bc2);
  return {O(h.beta1),        O(1.0 - h.beta1),          O(h.beta2),
          O(1.0 - h.beta2),  O(h.lr * bc2_sqrt / bc1),  O(h.eps * bc2_sqrt),
          O(h.weight_decay), O(1.0 - h.lr * h.weight_decay)};
}

// The first lines of Adam's family (Adam, NAdam, RAdam): the sign of g for maximize, the weight
// decay (into g, coupled, or onto p, decoupled), then both moments from the decayed g. S holds
// beta1, one_minus_beta1, beta2, one_minus_beta2, weight_decay and decay_factor (1 - lr * wd).
template <bool Maximize, WeightDecay WD, class O, class S>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void adam_moments(O& p, O& g, O& m, O& v, const S& s) {
  if constexpr (Maximize) g = -g;
  if constexpr (WD == WeightDecay::L2) g = g + s.weight_decay * p;
  if constexpr (WD == WeightDecay::Decoupled) p = p * s.decay_factor;
  m = s.beta1 * m + s.one_minus_beta1 * g;
  v = s.beta2 * v + s.one_minus_beta2 * g * g;
}

template <class O, bool Amsgrad, bool Maximize, WeightDecay WD>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void adam_update(O& p, O g, O& m, O& v, O& vmax,
                                                      const AdamScalars<O>& s) {
  adam_moments<Maximize, WD>(p, g, m, v, s);
  O v_used = v;
  if constexpr (Amsgrad) {
    vmax = nan_max(vmax, v);
    v_used = vmax;
  }
  p = p - s.step_size * (m / (fo_sqrt(v_used) + s.eps));
}

template <class St, bool Amsgrad, bool Maximize, WeightDecay WD>
struct AdamAlgo : Update<St, Amsgrad ? 5 : 4> {
  using O = typename St::compute_t;
  AdamScalars<O> s;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r) const {
    if constexpr (Amsgrad) {
      adam_update<O, true, Maximize, WD>(r[0], r[1], r[2], r[3], r[4], s);
    } else {
      O unused = O(0);
      adam_update<O, false, Maximize, WD>(r[0], r[1], r[2], r[3], unused, s);
    }
  }
};

FUSEDOPT_ISA_END

struct Adam : SpecDefaults {
  static constexpr const char* kName = "adam";
  using Kernel = Adam;
  struct Hyper {
    double lr, beta1, beta2, eps, weight_decay;
    bool amsgrad, maximize, decoupled_weight_decay;
  };
  static constexpr std::array kBuffers{
      BufferSpec{"params", nullptr, Role::Param},
      BufferSpec{"grads", nullptr, Role::Grad},
      BufferSpec{"exp_avgs", "exp_avg", Role::State},
      BufferSpec{"exp_avg_sqs", "exp_avg_sq", Role::State},
      BufferSpec{"max_exp_avg_sqs", "max_exp_avg_sq", Role::State, "amsgrad", When::Flag},
  };
  static constexpr std::array kHypers{
      lr_hyper(1e-3, &Hyper::lr),
      betas_hyper(0.9, 0.999, &Hyper::beta1, &Hyper::beta2, 2),
      real_hyper("eps", 1e-8, &Hyper::eps, kNonNegative, kInvalidEps, 1),
      real_hyper("weight_decay", 0.0, &Hyper::weight_decay, kNonNegative, kInvalidWeightDecay, 3),
      flag_hyper("amsgrad", false, &Hyper::amsgrad, 4),
      keyword_only(flag_hyper("maximize", false, &Hyper::maximize, 5)),
      keyword_only(flag_hyper("decoupled_weight_decay", false, &Hyper::decoupled_weight_decay, 6)),
  };

  // The one place where Adam's run-time flags become template arguments.
  template <class St, class Run>
  static void dispatch(const Hyper& h, const StepArgs& a, Run&& run) {
    using O = typename St::compute_t;
    const auto s = adam_scalars<O>(h, a.step);
    bool_switch(h.amsgrad, [&](auto A) {
      bool_switch(h.maximize, [&](auto M) {
        wd_switch(decay_mode(h.weight_decay, h.decoupled_weight_decay), [&](auto W) {
          run(AdamAlgo<St, decltype(A)::value, decltype(M)::value, decltype(W)::value>{{}, s});
        });
      });
    });
  }
};

// AdamW: Adam with decoupled weight decay always on, and weight_decay 1e-2 by default.
struct AdamW : SpecDefaults {
  static constexpr const char* kName = "adamw";
  using Kernel = Adam;
  using Hyper = Adam::Hyper;
  static constexpr auto kBuffers = Adam::kBuffers;
  static constexpr auto kHypers =
      with_fixed(with_default(Adam::kHypers, "weight_decay", 1e-2), "decoupled_weight_decay", 1.0);
};

}  // namespace fusedopt
