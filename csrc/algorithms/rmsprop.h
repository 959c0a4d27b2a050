// RMSprop (Hinton, Coursera "Neural Networks for Machine Learning", lecture 6e, 2012), centered
// variant from Graves ("Generating Sequences With Recurrent Neural Networks", 2013), in the
// torch.optim.RMSprop formulation. Must match fusedopt.reference.rmsprop.
//
//   g  = -g                                          if maximize (before weight decay)
//   g += wd * p                                      coupled weight decay
//   square_avg = alpha * square_avg + (1 - alpha) * g * g
//   grad_avg   = alpha * grad_avg + (1 - alpha) * g              centered only
//   avg = sqrt(square_avg - grad_avg^2) + eps   (centered)  |  sqrt(square_avg) + eps
//   buf = momentum * buf + g / avg ; p -= lr * buf   (momentum > 0; buf starts at 0)
//   p  -= lr * g / avg                               (otherwise)
//
// eps is outside the sqrt (Keras: inside, and lr kept in the momentum buffer).
// Slots: param, grad, square_avg[, momentum_buffer][, grad_avg].
#pragma once

#include "algorithm.h"

namespace fusedopt {
FUSEDOPT_ISA_BEGIN

template <class O>
struct RmspropScalars {
  O lr, alpha, one_minus_alpha, eps, weight_decay, momentum;
};

template <class O, bool Momentum, bool Centered, bool Maximize, WeightDecay WD>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void rmsprop_update(O& p, O g, O& square_avg, O& buf,
                                                         O& grad_avg,
                                                         const RmspropScalars<O>& s) {
  if constexpr (Maximize) g = -g;
  if constexpr (WD == WeightDecay::L2) g = g + s.weight_decay * p;
  square_avg = s.alpha * square_avg + s.one_minus_alpha * g * g;
  O avg;
  if constexpr (Centered) {
    grad_avg = s.alpha * grad_avg + s.one_minus_alpha * g;
    avg = fo_sqrt(square_avg - grad_avg * grad_avg) + s.eps;
  } else {
    avg = fo_sqrt(square_avg) + s.eps;
  }
  if constexpr (Momentum) {
    buf = s.momentum * buf + g / avg;
    p = p - s.lr * buf;
  } else {
    p = p - s.lr * (g / avg);
  }
}

template <class St, bool Momentum, bool Centered, bool Maximize, WeightDecay WD>
struct RmspropAlgo : Update<St, 3 + (Momentum ? 1 : 0) + (Centered ? 1 : 0)> {
  using O = typename St::compute_t;
  RmspropScalars<O> s;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r) const {
    O unused = O(0);
    if constexpr (Momentum && Centered) {
      rmsprop_update<O, true, true, Maximize, WD>(r[0], r[1], r[2], r[3], r[4], s);
    } else if constexpr (Momentum) {
      rmsprop_update<O, true, false, Maximize, WD>(r[0], r[1], r[2], r[3], unused, s);
    } else if constexpr (Centered) {
      rmsprop_update<O, false, true, Maximize, WD>(r[0], r[1], r[2], unused, r[3], s);
    } else {
      O unused_avg = O(0);
      rmsprop_update<O, false, false, Maximize, WD>(r[0], r[1], r[2], unused, unused_avg, s);
    }
  }
};

FUSEDOPT_ISA_END

struct Rmsprop : SpecDefaults {
  static constexpr const char* kName = "rmsprop";
  using Kernel = Rmsprop;
  struct Hyper {
    double lr, alpha, eps, weight_decay, momentum;
    bool centered, maximize;
  };
  static constexpr std::array kBuffers{
      BufferSpec{"params", nullptr, Role::Param},
      BufferSpec{"grads", nullptr, Role::Grad},
      BufferSpec{"square_avgs", "square_avg", Role::State},
      BufferSpec{"momentum_buffers", "momentum_buffer", Role::State, "momentum", When::Positive},
      BufferSpec{"grad_avgs", "grad_avg", Role::State, "centered", When::Flag},
  };
  static constexpr std::array kHypers{
      lr_hyper(1e-2, &Hyper::lr),
      real_hyper("alpha", 0.99, &Hyper::alpha, kNonNegative, "Invalid alpha value: {}", 5),
      real_hyper("eps", 1e-8, &Hyper::eps, kNonNegative, kInvalidEps, 1),
      real_hyper("weight_decay", 0.0, &Hyper::weight_decay, kNonNegative, kInvalidWeightDecay, 3),
      real_hyper("momentum", 0.0, &Hyper::momentum, kNonNegative, "Invalid momentum value: {}", 2),
      flag_hyper("centered", false, &Hyper::centered, 6),
      keyword_only(flag_hyper("maximize", false, &Hyper::maximize, 7)),
  };

  template <class St, class Run>
  static void dispatch(const Hyper& h, const StepArgs&, Run&& run) {
    using O = typename St::compute_t;
    const RmspropScalars<O> s{O(h.lr),  O(h.alpha),        O(1.0 - h.alpha),
                              O(h.eps), O(h.weight_decay), O(h.momentum)};
    bool_switch(h.momentum > 0.0, [&](auto Mo) {
      bool_switch(h.centered, [&](auto C) {
        bool_switch(h.maximize, [&](auto M) {
          coupled_switch(h.weight_decay, [&](auto W) {
            run(RmspropAlgo<St, decltype(Mo)::value, decltype(C)::value, decltype(M)::value,
                            decltype(W)::value>{{}, s});
          });
        });
      });
    });
  }
};

}  // namespace fusedopt
