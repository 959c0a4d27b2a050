// LAMB (You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
// ICLR 2020) as apex's FusedLAMB computes it (apex/optimizers/fused_lamb.py and
// csrc/multi_tensor_lamb.cu). Must match fusedopt.reference.lamb.
//
//   G    = || all grads ||_2 (every tensor of the step)        clip = G / max_grad_norm if
//   g    = g / clip                                              G > max_grad_norm, else 1
//   g   += wd * p                     L2 mode (adam_w_mode False)
//   m    = beta1 * m + beta3 * g      beta3 = 1 - beta1 with grad_averaging, else 1
//   v    = beta2 * v + (1 - beta2) * g * g
//   u    = (m / bc1) / (sqrt(v / bc2) + eps)          bc = 1 - beta^t with bias_correction, else 1
//   u   += wd * p                     decoupled mode (adam_w_mode True, the default)
//   r    = lr * ||p|| / ||u||         per tensor, ||p|| before the update; r = lr when either
//                                     norm is 0, and when wd == 0 and not use_nvlamb
//   p   -= r * u
//
// u is evaluated in Adam's efficient order (Note [Adam's efficient order] in adam.h):
// u = m * (sqrt(bc2) / bc1) / (sqrt(v) + eps * sqrt(bc2)), one division per element.
//
// Note [LAMB's passes]
// apex makes five passes (the grad norm, the param norms, the moments writing u into the grads,
// the norms of u, the update). Here (Note [Passes] in spec.h), with n the elements:
//   0  reduction: sum g^2 and sum p^2 per tensor                          reads p, g      8n B
//   1  reduction and update: m and v, and sum u^2 per tensor         reads p, g, m, v;
//                                                                     writes m, v      24n B
//   2  update: u again from the new m and v, p -= r u                 reads p, m, v;
//                                                                     writes p         16n B
// 48 bytes per element of fp32, where apex moves 52. Without a trust ratio (wd == 0 and not
// use_nvlamb) pass 1 updates p itself and pass 2 is skipped; pass 0 then reads only the grads,
// and is skipped too when the norm is given (below) or cannot clip (max_grad_norm = inf): 32 or
// 28 bytes per element. With a trust ratio, pass 0 reads the grads only when it needs their norm. Pass 2 recomputes u from the stored m and v with pass 1's arithmetic, so
// it updates p with the u whose norm pass 1 summed, bit for bit (both in the compute type) --
// but for 16-bit states: pass 2 reads m and v as stored, rounded, so its u may differ from pass
// 1's by that rounding (a relative 2^-9 for bfloat16), and p by an ulp of its dtype.
//
// The grad norm is over every grad of the step, across param groups (apex's). A bound call
// computes it from its own grads in pass 0; an optimizer whose step makes several calls computes
// it first and hands it to each call as the run input `grad_norm` (pass 0 then reads only p).
// Slots: param, grad, exp_avg, exp_avg_sq.
#pragma once

#include <cmath>

#include "algorithm.h"

namespace fusedopt {
FUSEDOPT_ISA_BEGIN

template <class O>
struct LambScalars {
  O beta1, beta3, beta2, one_minus_beta2;
  O u_scale;  // sqrt(bc2) / bc1
  O eps;      // eps * sqrt(bc2)
  O weight_decay;
  O clip;     // the divisor of the grads (1: no clipping), set per tensor from the call's values
  O lr;       // the step of pass 1 when it is the last
};

// The update direction u of one element from its new moments (Decay: wd != 0, so p is read).
template <bool L2, bool Decay, class O>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE O lamb_direction(O p, O m, O v, const LambScalars<O>& s) {
  O u = m * s.u_scale / (fo_sqrt(v) + s.eps);
  if constexpr (Decay && !L2) u = u + s.weight_decay * p;
  return u;
}

// The moments of one element, and its u (pass 1; pass 2 recomputes u alone).
template <bool L2, bool Decay, class O>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE O lamb_moments(O p, O g, O& m, O& v, const LambScalars<O>& s) {
  g = g / s.clip;
  if constexpr (Decay && L2) g = g + s.weight_decay * p;
  m = s.beta1 * m + s.beta3 * g;
  v = s.beta2 * v + s.one_minus_beta2 * g * g;
  return lamb_direction<L2, Decay>(p, m, v, s);
}

// A pass-1 algorithm object with the clip divisor of its call (call values, Note [Passes]).
template <class A>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE A with_clip(A a) {
  a.s.clip = typename A::O(a.call[1]);
  return a;
}

// Pass 0: the squares of the grad and of the param, in double (of those it reads; else 0).
template <class St, bool Params, bool Grads>
struct LambNormsAlgo : Reduction<St, 2, 2> {
  using O = typename St::compute_t;
  FUSEDOPT_HOST_DEVICE static constexpr bool read(int slot) { return slot == 0 ? Params : Grads; }
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(const O* r, double* c) const {
    const double p = static_cast<double>(r[0]);
    const double g = static_cast<double>(r[1]);
    c[0] = g * g;
    c[1] = p * p;
  }
};

// Pass 1 before a trust ratio: writes m and v, sums u^2 (the param is read for the decay only).
template <class St, bool L2, bool Decay>
struct LambMomentsAlgo : Reduction<St, 4, 1> {
  using O = typename St::compute_t;
  static constexpr bool kWrites = true;
  static constexpr bool kPerTensor = true;  // the clip divisor, from the call's values
  LambScalars<O> s;
  const double* call;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE LambMomentsAlgo for_tensor(int64_t) const {
    return with_clip(*this);
  }
  FUSEDOPT_HOST_DEVICE static constexpr bool written(int slot) { return slot >= 2; }
  FUSEDOPT_HOST_DEVICE static constexpr bool read(int slot) { return slot != 0 || Decay; }
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r, double* c) const {
    const double u = static_cast<double>(lamb_moments<L2, Decay>(r[0], r[1], r[2], r[3], s));
    c[0] = u * u;
  }
};

// Pass 1 without a trust ratio: the whole update, p -= lr u.
template <class St, bool L2, bool Decay>
struct LambStepAlgo : Update<St, 4> {
  using O = typename St::compute_t;
  static constexpr bool kPerTensor = true;
  LambScalars<O> s;
  const double* call;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE LambStepAlgo for_tensor(int64_t) const {
    return with_clip(*this);
  }
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r) const {
    r[0] = r[0] - s.lr * lamb_moments<L2, Decay>(r[0], r[1], r[2], r[3], s);
  }
};

// Pass 2: p -= ratio u, ratio the tensor's (for_tensor), u from the stored m and v.
template <class St, bool L2, bool Decay>
struct LambApplyAlgo : Update<St, 4> {
  using O = typename St::compute_t;
  static constexpr bool kPerTensor = true;
  LambScalars<O> s;
  const double* values;  // Lamb::kTensorValues per tensor of the call: the ratio is the second
  O ratio;
  FUSEDOPT_HOST_DEVICE static constexpr bool written(int slot) { return slot == 0; }
  FUSEDOPT_HOST_DEVICE static constexpr bool read(int slot) { return slot != 1; }
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE LambApplyAlgo for_tensor(int64_t tensor) const {
    LambApplyAlgo a = *this;
    a.ratio = O(values[tensor * 2 + 1]);
    return a;
  }
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r) const {
    r[0] = r[0] - ratio * lamb_direction<L2, Decay>(r[0], r[2], r[3], s);
  }
};

FUSEDOPT_ISA_END

struct Lamb : SpecDefaults {
  static constexpr const char* kName = "lamb";
  using Kernel = Lamb;
  struct Hyper {
    double lr, beta1, beta2, eps, weight_decay, max_grad_norm;
    bool bias_correction, amsgrad, adam_w_mode, grad_averaging, set_grad_none, use_nvlamb;
  };
  static constexpr auto kBuffers = kMomentBuffers;
  // apex's signature and defaults (it checks no range: these are torch's usual checks).
  static constexpr std::array kHypers{
      lr_hyper(1e-3, &Hyper::lr),
      flag_hyper("bias_correction", true, &Hyper::bias_correction, 5),
      betas_hyper(0.9, 0.999, &Hyper::beta1, &Hyper::beta2, 2),
      real_hyper("eps", 1e-6, &Hyper::eps, kNonNegative, kInvalidEps, 1),
      real_hyper("weight_decay", 1e-2, &Hyper::weight_decay, kNonNegative, kInvalidWeightDecay, 3),
      classes_only(flag_hyper("amsgrad", false, &Hyper::amsgrad, 6)),
      flag_hyper("adam_w_mode", true, &Hyper::adam_w_mode, 7),
      flag_hyper("grad_averaging", true, &Hyper::grad_averaging, 8),
      classes_only(flag_hyper("set_grad_none", true, &Hyper::set_grad_none, 9)),
      real_hyper("max_grad_norm", 1.0, &Hyper::max_grad_norm, kNonNegative,
                 "Invalid max_grad_norm value: {}", 4),
      flag_hyper("use_nvlamb", false, &Hyper::use_nvlamb, 10),
  };
  template <class H>
  static constexpr const char* check(const H& h) {
    return h.amsgrad ? "FusedLAMB does not support the AMSGrad variant." : nullptr;
  }

  static constexpr int kPasses = 3;  // Note [LAMB's passes]
  static constexpr int kCallValues = 2;    // the grad norm given (NaN: none), the clip divisor
  static constexpr int kTensorValues = 2;  // ||p||, then the trust ratio
  static constexpr const char* kRunInput = "grad_norm";

  FUSEDOPT_HOST_DEVICE static bool trust_ratio(const Hyper& h) {
    return h.use_nvlamb || h.weight_decay != 0.0;
  }
  // Whether pass 0 sums the grads' squares: the norm is not given, and it can clip.
  FUSEDOPT_HOST_DEVICE static bool grads_norm(const Hyper& h, double input) {
    return input == kNoRunInput && h.max_grad_norm != kInf;
  }
  static int pass_sums(const Hyper& h, int pass, double input) {
    switch (pass) {
      case 0:  // the norms: of p for a trust ratio, of the grads unless given or unused
        return trust_ratio(h) || grads_norm(h, input) ? 2 : -1;
      case 1: return trust_ratio(h) ? 1 : 0;
      default: return trust_ratio(h) ? 0 : -1;
    }
  }
  // After pass 0: the clip divisor and each ||p|| (skipped, sums is null: no ratio is needed, and
  // the norm is given or cannot clip); after pass 1: each trust ratio.
  // Runs on the host for host memory and as one device thread for device memory.
  FUSEDOPT_HOST_DEVICE static void between(const Hyper& h, int64_t, int pass, int64_t n,
                                           const double* sums, double* call, double* tensor) {
    if (pass == 0) {
      double norm = call[0];  // a NaN given stays NaN: it does not clip, as in apex
      if (grads_norm(h, call[0]) && sums != nullptr) {
        double sq = 0.0;
        for (int64_t i = 0; i < n; ++i) sq += sums[i * 2];
        norm = std::sqrt(sq);
      }
      // apex: G > max_grad_norm ? G / max_grad_norm : 1 (a NaN norm does not clip; nor does
      // kNoRunInput, left where the norm cannot clip)
      call[1] = norm > h.max_grad_norm ? norm / h.max_grad_norm : 1.0;
      if (sums != nullptr) {
        for (int64_t i = 0; i < n; ++i) tensor[i * 2] = std::sqrt(sums[i * 2 + 1]);
      }
      return;
    }
    if (sums == nullptr) return;  // pass 1 was the update (no trust ratio)
    for (int64_t i = 0; i < n; ++i) {
      const double pn = tensor[i * 2], un = std::sqrt(sums[i]);
      tensor[i * 2 + 1] = pn != 0.0 && un != 0.0 ? h.lr * (pn / un) : h.lr;
    }
  }

  template <class St, class Run>
  static void dispatch(const Hyper& h, const StepArgs& a, Run&& run) {
    using O = typename St::compute_t;
    const double t = static_cast<double>(a.step);
    const double bc1 = h.bias_correction ? 1.0 - std::pow(h.beta1, t) : 1.0;
    const double bc2 = h.bias_correction ? 1.0 - std::pow(h.beta2, t) : 1.0;
    const LambScalars<O> s{O(h.beta1),
                           O(h.grad_averaging ? 1.0 - h.beta1 : 1.0),
                           O(h.beta2),
                           O(1.0 - h.beta2),
                           O(std::sqrt(bc2) / bc1),
                           O(h.eps * std::sqrt(bc2)),
                           O(h.weight_decay),
                           O(1),
                           O(h.lr)};
    if (a.pass == 0) {
      const bool grads = grads_norm(h, a.run_input);
      bool_switch(trust_ratio(h), [&](auto P) {
        bool_switch(grads, [&](auto G) {
          run(LambNormsAlgo<St, decltype(P)::value, decltype(G)::value>{});
        });
      });
      return;
    }
    bool_switch(!h.adam_w_mode, [&](auto L2) {
      bool_switch(h.weight_decay != 0.0, [&](auto D) {
        constexpr bool l2 = decltype(L2)::value, decay = decltype(D)::value;
        if (a.pass == 1 && trust_ratio(h)) {
          run(LambMomentsAlgo<St, l2, decay>{{}, s, a.call_values});
        } else if (a.pass == 1) {
          run(LambStepAlgo<St, l2, decay>{{}, s, a.call_values});
        } else {
          run(LambApplyAlgo<St, l2, decay>{{}, s, a.tensor_values, O(0)});
        }
      });
    });
  }
};

}  // namespace fusedopt
