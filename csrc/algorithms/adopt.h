// ADOPT (Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any beta2 with the Optimal
// Rate", NeurIPS 2024), the authors' reference implementation (iShohei220/adopt, package
// torch-adopt 0.1.0: adopt.ADOPT, _single_tensor_adopt). Must match fusedopt.reference.adopt.
//
//   n = step - 1                     the steps completed before this one
//   g = -g                           if maximize;  g += wd * p   coupled (decouple=False)
//   n == 0:  v = v + g * g           the first step only sets v: p and m are not touched
//   n >= 1:  p = p - lr * wd * p     decoupled (decouple=True)
//            u = g / max(sqrt(v), eps)          eps is a floor, and v is the previous step's
//            u = clamp(u, -c, c)                c = clip_lambda(n) (default n ** 0.25; None: no clamp)
//            m = m + (1 - beta1) * (u - m)      torch.lerp, no bias correction
//            p = p - lr * m
//            v = beta2 * v + (1 - beta2) * g * g   after the update: the point of ADOPT
//
// The clamp and the floor propagate NaN (torch.clamp). m is interpolated as torch.lerp does:
// m + w * (u - m) for w = 1 - beta1 < 0.5, else u - (u - m) * (1 - w), so that beta1 = 0 gives
// m = u exactly. The sign of maximize is a multiply by -1 (exact), not a variant. Slots: param,
// grad, exp_avg, exp_avg_sq.
//
// Elsewhere: pytorch-optimizer's ADOPT counts its step before using it, so its clip is
// (n + 1) ** 0.25 (2 ** 0.25 where the reference has 1 on the second step), and it applies the
// decoupled decay on the first step too.
#pragma once

#include "algorithm.h"

namespace fusedopt {
FUSEDOPT_ISA_BEGIN

template <class O>
struct AdoptScalars {
  O sign;             // -1 if maximize, else 1
  O weight_decay;     // coupled
  O neg_lr_wd;        // -lr * wd (decoupled: p + (-lr * wd) * p, torch's p.add_(p, alpha=...))
  O eps;
  O clip;             // clip_lambda(n); +inf: no clamp
  O w, one_minus_w;   // the lerp weight 1 - beta1, and 1 - w (in O, as torch.lerp takes it)
  O neg_lr;
  O beta2, one_minus_beta2;
};

// The first step: v = g * g (plus the v the caller gave), nothing else.
template <class St, bool Coupled>
struct AdoptFirst : Update<St, 4> {
  using O = typename St::compute_t;
  AdoptScalars<O> s;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r) const {
    const O p = r[0];
    O g = r[1] * s.sign;
    O& v = r[3];
    if constexpr (Coupled) g = g + s.weight_decay * p;
    v = v + g * g;
  }
};

template <class St, WeightDecay WD, bool HighWeight>
struct AdoptAlgo : Update<St, 4> {
  using O = typename St::compute_t;
  AdoptScalars<O> s;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r) const {
    O& p = r[0];
    O g = r[1] * s.sign;
    O& m = r[2];
    O& v = r[3];
    if constexpr (WD == WeightDecay::L2) g = g + s.weight_decay * p;
    if constexpr (WD == WeightDecay::Decoupled) p = p + s.neg_lr_wd * p;
    const O root = fo_sqrt(v);
    const O denom = root < s.eps ? s.eps : root;
    O u = g / denom;
    u = u < -s.clip ? -s.clip : (u > s.clip ? s.clip : u);
    m = torch_lerp<HighWeight>(m, u, s.w, s.one_minus_w);
    p = p + s.neg_lr * m;
    v = s.beta2 * v + s.one_minus_beta2 * g * g;
  }
};

FUSEDOPT_ISA_END

struct Adopt : SpecDefaults {
  static constexpr const char* kName = "adopt";
  using Kernel = Adopt;
  struct Hyper {
    double lr, beta1, beta2, eps, clip_lambda, weight_decay;
    bool decouple, maximize;
  };
  static constexpr auto kBuffers = kMomentBuffers;
  static constexpr std::array kHypers{
      lr_hyper(1e-3, &Hyper::lr),
      betas_hyper(0.9, 0.9999, &Hyper::beta1, &Hyper::beta2, 2),
      real_hyper("eps", 1e-6, &Hyper::eps, kNonNegative, kInvalidEps, 1),
      step_fn_hyper("clip_lambda", 0.25, &Hyper::clip_lambda, kNonNegative,
                    "Invalid clip_lambda value: {}", 4, /*from_step=*/2),
      real_hyper("weight_decay", 0.0, &Hyper::weight_decay, kNonNegative, kInvalidWeightDecay, 3),
      flag_hyper("decouple", false, &Hyper::decouple, 5),
      keyword_only(flag_hyper("maximize", false, &Hyper::maximize, 6)),
  };

  template <class St, class Run>
  static void dispatch(const Hyper& h, const StepArgs& a, Run&& run) {
    using O = typename St::compute_t;
    const O w = O(1.0 - h.beta1);
    const AdoptScalars<O> s{O(h.maximize ? -1.0 : 1.0),
                            O(h.weight_decay),
                            O(-h.lr * h.weight_decay),
                            O(h.eps),
                            O(h.clip_lambda),
                            w,
                            O(1) - w,
                            O(-h.lr),
                            O(h.beta2),
                            O(1.0 - h.beta2)};
    const WeightDecay wd = decay_mode(h.weight_decay, h.decouple);
    if (a.step == 1) {
      bool_switch(wd == WeightDecay::L2, [&](auto C) {
        run(AdoptFirst<St, decltype(C)::value>{{}, s});
      });
      return;
    }
    // torch.lerp's branch: |weight| < 0.5 (1 - beta1 is in (0, 1])
    bool_switch(!(1.0 - h.beta1 < 0.5), [&](auto High) {
      wd_switch(wd, [&](auto W) {
        run(AdoptAlgo<St, decltype(W)::value, decltype(High)::value>{{}, s});
      });
    });
  }
};

}  // namespace fusedopt
