// The sum of squares of each tensor of a list, in double: a reduction pass (Note [Deterministic
// reductions] in cpu/driver.h), the first of the norms that global-norm clipping, LAMB's trust
// ratio and Adafactor's scaling are made of. Must match math.fsum of the squares to within the
// error bound of a double sum.
//
//   out[i] = sum_j x_ij^2       each square formed in double from the stored value
//
// Slots: the tensor (only read). Accumulators: 1.
#pragma once

#include "algorithm.h"

namespace fusedopt {
FUSEDOPT_ISA_BEGIN

template <class St>
struct SumsqAlgo : Reduction<St, 1, 1> {
  using O = typename St::compute_t;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(const O* r, double* c) const {
    const double x = static_cast<double>(r[0]);
    c[0] = x * x;
  }
};

FUSEDOPT_ISA_END

struct Sumsq : SpecDefaults {
  static constexpr const char* kName = "sumsq";
  using Kernel = Sumsq;
  struct Hyper {};
  static constexpr bool kHasStep = false;
  static constexpr int kReduce = 1;
  static constexpr std::array kBuffers{BufferSpec{"tensors", nullptr, Role::Input}};
  static constexpr std::array<HyperSpec<Hyper>, 0> kHypers{};

  template <class St, class Run>
  static void dispatch(const Hyper&, const StepArgs&, Run&& run) {
    run(SumsqAlgo<St>{});
  }
};

}  // namespace fusedopt
