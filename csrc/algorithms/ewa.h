// Exponentially weighted average, the running average behind momentum, RMSprop and weight EMA
// (Polyak-Ruppert averaging with exponential weights). Must match fusedopt.reference.ewa and
// fusedopt.reference.ewa_readout.
//
//   update:   avg = beta * avg + (1 - beta) * x        (avg starts at 0)
//   read-out: out = avg / (1 - beta^t)                 bias correction for the zero start
//
// Slots: update: average, value;  read-out: out, average (the average is only read).
#pragma once

#include "algorithm.h"

namespace fusedopt {
FUSEDOPT_ISA_BEGIN

template <class St>
struct EwaAlgo : Update<St, 2> {
  using O = typename St::compute_t;
  O beta, one_minus_beta;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r) const {
    r[0] = beta * r[0] + one_minus_beta * r[1];
  }
};

template <class St>
struct EwaReadoutAlgo : Update<St, 2> {
  using O = typename St::compute_t;
  O bias_correction;  // 1 - beta^t
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r) const {
    r[0] = r[1] / bias_correction;
  }
};

FUSEDOPT_ISA_END

struct EwaHyper {
  double beta;
};

// beta in [0, 1): 1 would never move the average and divide the read-out by 0.
constexpr std::array kEwaHypers{
    required(real_hyper("beta", 0.0, &EwaHyper::beta, kUnitHalfOpen, "Invalid beta value: {}", 0))};

struct Ewa : SpecDefaults {
  static constexpr const char* kName = "ewa";
  using Kernel = Ewa;
  using Hyper = EwaHyper;
  static constexpr bool kHasStep = false;
  static constexpr std::array kBuffers{
      BufferSpec{"averages", nullptr, Role::Param},
      BufferSpec{"values", nullptr, Role::Grad},
  };
  static constexpr auto kHypers = kEwaHypers;

  template <class St, class Run>
  static void dispatch(const Hyper& h, const StepArgs&, Run&& run) {
    using O = typename St::compute_t;
    run(EwaAlgo<St>{{}, O(h.beta), O(1.0 - h.beta)});
  }
};

struct EwaReadout : SpecDefaults {
  static constexpr const char* kName = "ewa_readout";
  using Kernel = EwaReadout;
  using Hyper = EwaHyper;
  static constexpr std::array kBuffers{
      BufferSpec{"averages", nullptr, Role::Grad},
      BufferSpec{"outs", nullptr, Role::Param},
  };
  static constexpr auto kHypers = kEwaHypers;

  template <class St, class Run>
  static void dispatch(const Hyper& h, const StepArgs& a, Run&& run) {
    using O = typename St::compute_t;
    run(EwaReadoutAlgo<St>{{}, O(1.0 - std::pow(h.beta, static_cast<double>(a.step)))});
  }
};

}  // namespace fusedopt
