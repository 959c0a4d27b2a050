// Each tensor of a list multiplied by one factor, in place: the second half of global-norm
// clipping (fusedopt.clip_grad_norm_: the norm is the sumsq reduction, then this pass), and a
// multi-tensor x *= c on its own. Must match fusedopt.reference.scale.
//
//   x = x * factor          the factor rounded once to the storage's compute type
//
// A non-finite factor is applied as it is (torch's clip_grad_norm_ scales by a NaN coefficient
// when the norm is NaN and error_if_nonfinite is False). Slots: the tensor.
#pragma once

#include "algorithm.h"

namespace fusedopt {
FUSEDOPT_ISA_BEGIN

template <class St>
struct ScaleAlgo : Update<St, 1> {
  using O = typename St::compute_t;
  O factor;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(O* r) const { r[0] = r[0] * factor; }
};

FUSEDOPT_ISA_END

struct Scale : SpecDefaults {
  static constexpr const char* kName = "scale";
  using Kernel = Scale;
  struct Hyper {
    double factor;
  };
  static constexpr bool kHasStep = false;
  static constexpr std::array kBuffers{BufferSpec{"tensors", nullptr, Role::Param}};
  static constexpr std::array kHypers{
      required(real_hyper("factor", 1.0, &Hyper::factor, kAnyReal, nullptr, 0))};

  template <class St, class Run>
  static void dispatch(const Hyper& h, const StepArgs&, Run&& run) {
    using O = typename St::compute_t;
    run(ScaleAlgo<St>{{}, O(h.factor)});
  }
};

}  // namespace fusedopt
