// Schedule-Free AdamW (Defazio et al., "The Road Less Scheduled", NeurIPS 2024), the rule of the
// schedulefree package (1.4.1: schedulefree.AdamWScheduleFree). Must match
// fusedopt.reference.adamw_schedulefree and fusedopt.reference.lerp.
//
// The params hold y, where the grads are taken; z is the base sequence and x, the average that is
// evaluated, is never stored (y = (1 - beta1) z + beta1 x; the class's eval() turns y into x).
// Per step, with k = step - 1 the steps before it and weight_sum, lr_max the scalar state:
//
//   sched = k < warmup_steps ? (k + 1) / warmup_steps : 1;   lr = lr * sched
//   lr_max = max(lr_max, lr);   weight = (k + 1)^r * lr_max^weight_lr_power
//   weight_sum += weight;       c = weight / weight_sum (0 if weight_sum is 0)
//   v = beta2 * v + (1 - beta2) * g * g
//   u = g / (sqrt(v / (1 - beta2^t)) + eps)  (+ wd * y: the decay is taken at y)
//   y = lerp(y, z, c) + lr * (beta1 * (1 - c) - 1) * u
//   z = z - lr * u
//
// u is evaluated as g * sqrt(1 - beta2^t) / (sqrt(v) + eps * sqrt(1 - beta2^t)) (Note [Adam's
// efficient order] in adam.h: the same value, one division per element instead of two). lerp is
// torch.lerp's: y + c (z - y) for c < 0.5, else z - (z - y)(1 - c), so that the first step
// (c = 1) gives y = z exactly. The package writes u into the grads; the grads are only read here.
// Slots: param (y), grad, z, exp_avg_sq.
//
// Lerp, the class's train() and eval(): params = lerp(params, ends, weight) in torch.lerp's two
// forms. Slots: param, end (only read).
#pragma once

#include <algorithm>
#include <stdexcept>

#include "algorithm.h"

namespace fusedopt {
FUSEDOPT_ISA_BEGIN

template <class O>
struct SfScalars {
  O beta2, one_minus_beta2;
  O bc2_sqrt;     // sqrt(1 - beta2^t)
  O eps;          // eps * sqrt(1 - beta2^t)
  O weight_decay;
  O c, one_minus_c;
  O a;            // lr * (beta1 * (1 - c) - 1)
  O lr;
};

template <class St, bool Decay, bool HighWeight>
struct AdamwSchedulefreeAlgo : Update<St, 4> {
  using O = typename St::compute_t;
  SfScalars<O> s;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r) const {
    O& y = r[0];
    const O g = r[1];
    O& z = r[2];
    O& v = r[3];
    v = s.beta2 * v + s.one_minus_beta2 * g * g;
    O u = s.bc2_sqrt * g / (fo_sqrt(v) + s.eps);
    if constexpr (Decay) u = u + s.weight_decay * y;
    y = torch_lerp<HighWeight>(y, z, s.c, s.one_minus_c) + s.a * u;
    z = z - s.lr * u;
  }
};

template <class St, bool HighWeight>
struct LerpAlgo : Update<St, 2> {
  using O = typename St::compute_t;
  O w, one_minus_w;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r) const {
    r[0] = torch_lerp<HighWeight>(r[0], r[1], w, one_minus_w);
  }
};

FUSEDOPT_ISA_END

// The package's per-step scalars from the state before step t (weight_sum, lr_max), in its
// expressions and order.
struct SfStep {
  double lr, lr_max, weight_sum, c;
};
inline SfStep sf_step(double lr0, double warmup_steps, double r, double power, int64_t t,
                      double weight_sum, double lr_max) {
  const double k = static_cast<double>(t - 1);
  const double sched = k < warmup_steps ? (k + 1.0) / warmup_steps : 1.0;
  const double lr = lr0 * sched;
  lr_max = std::max(lr, lr_max);
  const double weight = std::pow(k + 1.0, r) * std::pow(lr_max, power);
  weight_sum = weight_sum + weight;
  const double c = weight_sum != 0.0 ? weight / weight_sum : 0.0;
  return {lr, lr_max, weight_sum, c};
}

struct AdamWScheduleFree : SpecDefaults {
  static constexpr const char* kName = "adamw_schedulefree";
  using Kernel = AdamWScheduleFree;
  struct Hyper {
    double lr, beta1, beta2, eps, weight_decay, warmup_steps, r, weight_lr_power;
  };
  static constexpr std::array kBuffers{
      BufferSpec{"params", nullptr, Role::Param},
      BufferSpec{"grads", nullptr, Role::Grad},
      BufferSpec{"zs", "z", Role::State, nullptr, When::Always, "params"},
      BufferSpec{"exp_avg_sqs", "exp_avg_sq", Role::State},
  };
  static constexpr std::array kHypers{
      lr_hyper(0.0025, &Hyper::lr),
      betas_hyper(0.9, 0.999, &Hyper::beta1, &Hyper::beta2, 2),
      real_hyper("eps", 1e-8, &Hyper::eps, kNonNegative, kInvalidEps, 1),
      real_hyper("weight_decay", 0.0, &Hyper::weight_decay, kNonNegative, kInvalidWeightDecay, 3),
      real_hyper("warmup_steps", 0.0, &Hyper::warmup_steps, kFiniteNonNegative,
                 "Invalid warmup_steps value: {}", 4),
      real_hyper("r", 0.0, &Hyper::r, kAnyReal, nullptr, 5),
      // >= 0: the package raises ZeroDivisionError for lr = 0 and a negative power (0 ** -1),
      // and a negative power would weigh the iterates of the smallest rates most
      real_hyper("weight_lr_power", 2.0, &Hyper::weight_lr_power, kNonNegative,
                 "Invalid weight_lr_power value: {}", 6),
  };
  static constexpr std::array kScalars{ScalarSpec{"weight_sum", 0.0}, ScalarSpec{"lr_max", -1.0}};

  static void advance(const Hyper& h, int64_t step, const double* in, double* out) {
    const SfStep s = sf_step(h.lr, h.warmup_steps, h.r, h.weight_lr_power, step, in[0], in[1]);
    out[0] = s.weight_sum;
    out[1] = s.lr_max;
  }
  // Before step t of a run that started at step 1 with this lr throughout: the steps replayed
  // (so a call far into a run must give the scalar state).
  static constexpr int64_t kMaxReplay = int64_t{1} << 24;
  static void initial(const Hyper& h, int64_t step, double* out) {
    if (step > kMaxReplay) {
      throw std::invalid_argument(
          "adamw_schedulefree: weight_sum and lr_max are needed past step 16777216 (the state "
          "before a step is replayed from step 1 only up to there)");
    }
    double in[2] = {0.0, -1.0};
    for (int64_t t = 1; t < step; ++t) advance(h, t, in, in);
    out[0] = in[0];
    out[1] = in[1];
  }

  template <class St, class Run>
  static void dispatch(const Hyper& h, const StepArgs& a, Run&& run) {
    using O = typename St::compute_t;
    const SfStep st = sf_step(h.lr, h.warmup_steps, h.r, h.weight_lr_power, a.step,
                              a.scalars_in[0], a.scalars_in[1]);
    const double bc2_sqrt = std::sqrt(1.0 - std::pow(h.beta2, static_cast<double>(a.step)));
    const O c = O(st.c);
    const SfScalars<O> s{O(h.beta2),
                         O(1.0 - h.beta2),
                         O(bc2_sqrt),
                         O(h.eps * bc2_sqrt),
                         O(h.weight_decay),
                         c,
                         O(1) - c,
                         O(st.lr * (h.beta1 * (1.0 - st.c) - 1.0)),
                         O(st.lr)};
    bool_switch(!(st.c < 0.5), [&](auto High) {
      bool_switch(h.weight_decay != 0.0, [&](auto D) {
        run(AdamwSchedulefreeAlgo<St, decltype(D)::value, decltype(High)::value>{{}, s});
      });
    });
  }
};

struct Lerp : SpecDefaults {
  static constexpr const char* kName = "lerp";
  using Kernel = Lerp;
  struct Hyper {
    double weight;
  };
  static constexpr bool kHasStep = false;
  static constexpr std::array kBuffers{
      BufferSpec{"params", nullptr, Role::Param},
      BufferSpec{"ends", nullptr, Role::Grad},
  };
  static constexpr std::array kHypers{
      required(real_hyper("weight", 0.0, &Hyper::weight, kAnyReal, nullptr, 0))};

  template <class St, class Run>
  static void dispatch(const Hyper& h, const StepArgs&, Run&& run) {
    using O = typename St::compute_t;
    const O w = O(h.weight);
    bool_switch(!(std::fabs(h.weight) < 0.5), [&](auto High) {
      run(LerpAlgo<St, decltype(High)::value>{{}, w, O(1) - w});
    });
  }
};

}  // namespace fusedopt
