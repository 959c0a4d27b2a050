// NAdam (Dozat, "Incorporating Nesterov Momentum into Adam", ICLR workshop 2016) with the
// momentum schedule mu_t, in the torch.optim.NAdam formulation (per-parameter mu_product).
// Must match fusedopt.reference.nadam.
//
//   g  = -g                                     if maximize (before weight decay)
//   g += wd * p          coupled  |  p *= 1 - lr * wd   decoupled (NAdamW)
//   mu_t    = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay))
//   mu_next = beta1 * (1 - 0.5 * 0.96^((t + 1) * momentum_decay))
//   mu_product_t = mu_product_{t-1} * mu_t       (host side, in double; 1 before the first step)
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g * g
//   denom = sqrt(v / (1 - beta2^t)) + eps        the bias correction is inside the sqrt here
//   p -= lr * (1 - mu_t) / (1 - mu_product_t) * g / denom
//   p -= lr * mu_next / (1 - mu_product_t * mu_next) * m / denom
//
// Keras uses 0.96^t (no momentum_decay) and one global product: not this.
//
// Evaluated in the order of Note [Adam's efficient order] (adam.h): with c = sqrt(1 - beta2^t),
//   p -= (c * coef_g * g + c * coef_m * m) / (sqrt(v) + eps * c),
// the same update with one division instead of three.
// Slots: param, grad, exp_avg, exp_avg_sq. Scalar state: mu_product.
#pragma once

#include "adam.h"

namespace fusedopt {
FUSEDOPT_ISA_BEGIN

template <class O>
struct NadamScalars {
  O beta1, one_minus_beta1, beta2, one_minus_beta2;
  O coef_g;   // sqrt(1 - beta2^t) * lr * (1 - mu_t) / (1 - mu_product_t)
  O coef_m;   // sqrt(1 - beta2^t) * lr * mu_next / (1 - mu_product_t * mu_next)
  O eps;      // eps * sqrt(1 - beta2^t)
  O weight_decay, decay_factor;
};

inline double nadam_mu(double beta1, double momentum_decay, int64_t t) {
  return beta1 * (1.0 - 0.5 * std::pow(0.96, static_cast<double>(t) * momentum_decay));
}

// Note [NAdam's product in closed form]
// The product of mu_1 .. mu_n is beta1^n * prod (1 - q^k / 2) with q = 0.96^momentum_decay. Its
// logarithm is n log(beta1) + sum_k log(1 - q^k / 2), and expanding log(1 - x) = -sum_j x^j / j
// and summing the geometric series in k gives
//   sum_k log(1 - q^k / 2) = -sum_j (2^-j / j) q^j (1 - q^(j n)) / (1 - q^j),
// whose terms fall by at least half with each j: 60 terms reach the precision of a double
// whatever n is (the ratio is evaluated with expm1, exact also for q near 1; for q = 1 it is n).
// So the product before step t costs the same at t = 10 and at t = 10^12. It is what
// fusedopt.functional.nadam computes for mu_product=None; an optimizer keeps the running product
// as torch does, which agrees to about 1e-15 relative until it underflows.
inline double nadam_product(double beta1, double momentum_decay, int64_t n) {
  if (n <= 0) return 1.0;
  if (beta1 == 0.0) return 0.0;
  const double nn = static_cast<double>(n);
  const double log_q = momentum_decay * std::log(0.96);
  double series = 0.0;
  for (int j = 1; j <= 60; ++j) {
    const double jj = static_cast<double>(j);
    const double ratio =
        log_q == 0.0 ? nn : std::expm1(jj * nn * log_q) / std::expm1(jj * log_q);
    series += std::ldexp(1.0, -j) / jj * std::exp(jj * log_q) * ratio;
  }
  return std::exp(nn * std::log(beta1) - series);
}

template <class St, bool Maximize, WeightDecay WD>
struct NadamAlgo : Update<St, 4> {
  using O = typename St::compute_t;
  NadamScalars<O> s;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r) const {
    O& p = r[0];
    O g = r[1];
    O& m = r[2];
    O& v = r[3];
    adam_moments<Maximize, WD>(p, g, m, v, s);
    p = p - (s.coef_g * g + s.coef_m * m) / (fo_sqrt(v) + s.eps);
  }
};

FUSEDOPT_ISA_END

struct Nadam : SpecDefaults {
  static constexpr const char* kName = "nadam";
  using Kernel = Nadam;
  struct Hyper {
    double lr, beta1, beta2, eps, weight_decay, momentum_decay;
    bool decoupled_weight_decay, maximize;
  };
  static constexpr auto kBuffers = kMomentBuffers;
  static constexpr std::array kHypers{
      lr_hyper(2e-3, &Hyper::lr),
      betas_hyper(0.9, 0.999, &Hyper::beta1, &Hyper::beta2, 2),
      real_hyper("eps", 1e-8, &Hyper::eps, kNonNegative, kInvalidEps, 1),
      real_hyper("weight_decay", 0.0, &Hyper::weight_decay, kNonNegative, kInvalidWeightDecay, 3),
      real_hyper("momentum_decay", 4e-3, &Hyper::momentum_decay, kNonNegative,
                 "Invalid momentum_decay value: {}", 4),
      flag_hyper("decoupled_weight_decay", false, &Hyper::decoupled_weight_decay, 5),
      keyword_only(flag_hyper("maximize", false, &Hyper::maximize, 6)),
  };
  static constexpr std::array kScalars{ScalarSpec{"mu_product", 1.0}};

  static void advance(const Hyper& h, int64_t step, const double* in, double* out) {
    out[0] = in[0] * nadam_mu(h.beta1, h.momentum_decay, step);
  }
  static void initial(const Hyper& h, int64_t step, double* out) {
    out[0] = nadam_product(h.beta1, h.momentum_decay, step - 1);
  }

  template <class St, class Run>
  static void dispatch(const Hyper& h, const StepArgs& a, Run&& run) {
    using O = typename St::compute_t;
    const double mu = nadam_mu(h.beta1, h.momentum_decay, a.step);
    const double mu_next = nadam_mu(h.beta1, h.momentum_decay, a.step + 1);
    const double mu_product = a.scalars_in[0] * mu;  // the same expression as advance
    const double c = std::sqrt(1.0 - std::pow(h.beta2, static_cast<double>(a.step)));
    const NadamScalars<O> s{O(h.beta1),
                            O(1.0 - h.beta1),
                            O(h.beta2),
                            O(1.0 - h.beta2),
                            O(c * h.lr * (1.0 - mu) / (1.0 - mu_product)),
                            O(c * h.lr * mu_next / (1.0 - mu_product * mu_next)),
                            O(h.eps * c),
                            O(h.weight_decay),
                            O(1.0 - h.lr * h.weight_decay)};
    bool_switch(h.maximize, [&](auto M) {
      wd_switch(decay_mode(h.weight_decay, h.decoupled_weight_decay), [&](auto W) {
        run(NadamAlgo<St, decltype(M)::value, decltype(W)::value>{{}, s});
      });
    });
  }
};

}  // namespace fusedopt
