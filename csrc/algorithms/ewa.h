// Exponentially weighted average, the running average behind momentum, RMSprop and weight EMA
// (Polyak-Ruppert averaging with exponential weights). Must match fusedopt.reference.ewa and
// fusedopt.reference.ewa_readout.
//
//   update:   avg = beta * avg + (1 - beta) * x        (avg starts at 0)
//   read-out: out = avg / (1 - beta^t)                 bias correction for the zero start
//
// Buffers: update: average, value;  read-out: out, average (the second is the read-only one).
#pragma once

#include "../common.h"

namespace fusedopt {

struct EwaHyper {
  double beta;
};

FUSEDOPT_ISA_BEGIN

template <class O>
struct EwaScalars {
  O beta, one_minus_beta;
};

template <class O>
struct EwaReadoutScalars {
  O bias_correction;  // 1 - beta^t
};

template <class O>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void ewa_update(O& avg, O x, const EwaScalars<O>& s) {
  avg = s.beta * avg + s.one_minus_beta * x;
}

template <class O>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void ewa_readout_update(O& out, O avg,
                                                             const EwaReadoutScalars<O>& s) {
  out = avg / s.bias_correction;
}

template <class S>
struct EwaAlgo {
  using storage_t = S;
  using O = opmath_t<S>;
  static constexpr int kBuffers = 2;
  EwaScalars<O> s;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r) const { ewa_update<O>(r[0], r[1], s); }
};

template <class S>
struct EwaReadoutAlgo {
  using storage_t = S;
  using O = opmath_t<S>;
  static constexpr int kBuffers = 2;
  EwaReadoutScalars<O> s;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r) const {
    ewa_readout_update<O>(r[0], r[1], s);
  }
};

template <class Run>
void ewa_dispatch(DType dt, const EwaHyper& h, Run&& run) {
  dtype_switch(dt, [&](auto sv) {
    using S = decltype(sv);
    using O = opmath_t<S>;
    run(EwaAlgo<S>{{O(h.beta), O(1.0 - h.beta)}});
  });
}

template <class Run>
void ewa_readout_dispatch(DType dt, const EwaHyper& h, int64_t step, Run&& run) {
  const double bc = 1.0 - std::pow(h.beta, static_cast<double>(step));
  dtype_switch(dt, [&](auto sv) {
    using S = decltype(sv);
    using O = opmath_t<S>;
    run(EwaReadoutAlgo<S>{{O(bc)}});
  });
}

FUSEDOPT_ISA_END
}  // namespace fusedopt
