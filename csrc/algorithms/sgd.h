// Stochastic gradient descent with optional momentum (Polyak, 1964) and Nesterov momentum
// (Sutskever et al., ICML 2013), in the torch.optim.SGD formulation. Batch, mini-batch and
// stochastic gradient descent differ only in how the caller computes g. Must match
// fusedopt.reference.sgd.
//
//   g  = -g                                 if maximize (before weight decay)
//   g += wd * p                             coupled weight decay
//   buf = g                                 first step (a fresh buffer, no dampening)
//   buf = momentum * buf + (1 - dampening) * g        later steps
//   g   = g + momentum * buf   (Nesterov)   |   g = buf   (heavy ball)
//   p  -= lr * g
//
// lr multiplies the whole step (Keras folds lr into the buffer instead, which differs when lr
// changes). The buffer is "fresh" at step 1: the optimizer classes pass step 1 for a buffer they
// have just allocated. Slots: param, grad[, momentum_buffer].
#pragma once

#include "algorithm.h"

namespace fusedopt {
FUSEDOPT_ISA_BEGIN

template <class O>
struct SgdScalars {
  O lr, momentum, one_minus_dampening, weight_decay;
};

template <class O, bool Momentum, bool First, bool Nesterov, bool Maximize, WeightDecay WD>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void sgd_update(O& p, O g, O& buf, const SgdScalars<O>& s) {
  if constexpr (Maximize) g = -g;
  if constexpr (WD == WeightDecay::L2) g = g + s.weight_decay * p;
  if constexpr (Momentum) {
    if constexpr (First) {
      buf = g;
    } else {
      buf = s.momentum * buf + s.one_minus_dampening * g;
    }
    if constexpr (Nesterov) {
      g = g + s.momentum * buf;
    } else {
      g = buf;
    }
  }
  p = p - s.lr * g;
}

template <class St, bool Momentum, bool First, bool Nesterov, bool Maximize, WeightDecay WD>
struct SgdAlgo : Update<St, Momentum ? 3 : 2> {
  using O = typename St::compute_t;
  SgdScalars<O> s;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r) const {
    if constexpr (Momentum) {
      sgd_update<O, true, First, Nesterov, Maximize, WD>(r[0], r[1], r[2], s);
    } else {
      O unused = O(0);
      sgd_update<O, false, false, false, Maximize, WD>(r[0], r[1], unused, s);
    }
  }
};

FUSEDOPT_ISA_END

struct Sgd : SpecDefaults {
  static constexpr const char* kName = "sgd";
  using Kernel = Sgd;
  struct Hyper {
    double lr, momentum, dampening, weight_decay;
    bool nesterov, maximize;
  };
  static constexpr std::array kBuffers{
      BufferSpec{"params", nullptr, Role::Param},
      BufferSpec{"grads", nullptr, Role::Grad},
      BufferSpec{"momentum_buffers", "momentum_buffer", Role::State, "momentum", When::NonZero},
  };
  static constexpr std::array kHypers{
      lr_hyper(1e-3, &Hyper::lr),
      real_hyper("momentum", 0.0, &Hyper::momentum, kNonNegative, "Invalid momentum value: {}", 1),
      real_hyper("dampening", 0.0, &Hyper::dampening, kAnyReal, nullptr, 3),
      real_hyper("weight_decay", 0.0, &Hyper::weight_decay, kNonNegative, kInvalidWeightDecay, 2),
      flag_hyper("nesterov", false, &Hyper::nesterov, 4),
      keyword_only(flag_hyper("maximize", false, &Hyper::maximize, 5)),
  };

  static constexpr const char* check(const Hyper& h) {
    return h.nesterov && (h.momentum <= 0.0 || h.dampening != 0.0)
               ? "Nesterov momentum requires a momentum and zero dampening"
               : nullptr;
  }

  template <class St, class Run>
  static void dispatch(const Hyper& h, const StepArgs& a, Run&& run) {
    using O = typename St::compute_t;
    const SgdScalars<O> s{O(h.lr), O(h.momentum), O(1.0 - h.dampening), O(h.weight_decay)};
    bool_switch(h.maximize, [&](auto M) {
      coupled_switch(h.weight_decay, [&](auto W) {
        constexpr bool kMax = decltype(M)::value;
        constexpr WeightDecay kWd = decltype(W)::value;
        if (h.momentum == 0.0) {
          run(SgdAlgo<St, false, false, false, kMax, kWd>{{}, s});
          return;
        }
        bool_switch(a.step == 1, [&](auto F) {
          bool_switch(h.nesterov, [&](auto N) {
            run(SgdAlgo<St, true, decltype(F)::value, decltype(N)::value, kMax, kWd>{{}, s});
          });
        });
      });
    });
  }
};

}  // namespace fusedopt
