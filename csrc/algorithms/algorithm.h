// What every algorithm header includes: the spec vocabulary (spec.h), the storage types
// (storage.h), and the bases of the algorithm objects a spec's dispatch hands to the drivers.
//
// An algorithm object is the per-element step of one variant, for one Storage, with its step
// scalars already folded (Note [Step scalars in double]):
//   using storage;  using O (the compute type);  kBuffers (slots, Note [Kernel slots])
//   an update:      void operator()(O* r) const           r[k] is slot k, loaded; written back
//   a reduction:    void operator()(O* r, double* c) const
//                   sets c[0..kAccumulators) to this element's terms of the per-tensor sums
//                   (Note [Deterministic reductions] in cpu/driver.h); a reduction that also
//                   updates (kWrites) writes back its written slots
//   read(k)         whether slot k is loaded (else r[k] is 0): a pass of a spec of several
//                   passes (Note [Passes] in spec.h) touches only the buffers it needs
//   kPerTensor      whether it reads a value per tensor: the drivers run for_tensor(i), a copy
//                   with the value of the call's tensor i, over that tensor's elements
//
// Note [Step scalars in double]
// Everything that depends only on the step and the hyper-parameters (bias corrections, decayed
// rates, products such as lr * wd) is computed once per call, in double, on the host, and rounded
// once to the compute type; the element loop sees only the folded constants.
#pragma once

#include "../spec.h"
#include "../storage.h"

namespace fusedopt {
FUSEDOPT_ISA_BEGIN

template <class St, int Slots>
struct Update {
  using storage = St;
  using O = typename St::compute_t;
  static constexpr int kBuffers = Slots;
  static constexpr int kAccumulators = 0;
  static constexpr bool kWrites = true;
  static constexpr bool kPerTensor = false;
  // Slot 1 (the grads) is only read; every other slot is written back.
  FUSEDOPT_HOST_DEVICE static constexpr bool written(int slot) { return slot != 1; }
  FUSEDOPT_HOST_DEVICE static constexpr bool read(int) { return true; }
};

// The copy of `algo` that runs over the elements of the call's tensor `tensor`.
template <class A>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE A at_tensor(const A& algo, int64_t tensor) {
  if constexpr (A::kPerTensor) {
    return algo.for_tensor(tensor);
  } else {
    (void)tensor;
    return algo;
  }
}

// Note [The fused unscale]
// An update can take grads that are still scaled (AMP: torch.amp.GradScaler multiplies the loss by
// a scale s) with the factor that unscales them, 1/s computed in double and rounded to float32 as
// GradScaler's own unscale_ computes it; each grad is multiplied by it as it is loaded, before the
// algorithm's step, so a fused step gives the bits of an unscaled grad's step and the grads are
// left as they were. The CPU kernels are instantiated with and without the factor: a multiply per
// element that every step paid would slow the in-cache kernels (measured in bench/results). The CUDA
// kernels take no factor (the torch front end unscales CUDA grads before their step).
// A reduction that reads grads (a pass of LAMB's) takes the factor the same way.
template <class A>
struct GradScaled : A {
  typename A::O grad_factor;
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(typename A::O* r) const {
    r[1] = r[1] * grad_factor;
    A::operator()(r);
  }
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void operator()(typename A::O* r, double* c) const {
    r[1] = r[1] * grad_factor;
    A::operator()(r, c);
  }
  FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE GradScaled for_tensor(int64_t tensor) const {
    return {A::for_tensor(tensor), grad_factor};
  }
};

// torch.lerp(a, b, w) in its two forms: a + w (b - a) for |w| < 0.5, else b - (b - a)(1 - w)
// (the second gives b exactly at w = 1). The form is the caller's template argument, chosen once
// per call from the host's w; one_minus_w is 1 - w in the compute type, as torch forms it.
template <bool HighWeight, class O>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE O torch_lerp(O a, O b, O w, O one_minus_w) {
  if constexpr (HighWeight) {
    return b - (b - a) * one_minus_w;
  } else {
    return a + w * (b - a);
  }
}

FUSEDOPT_ISA_END

// The buffer lists of the algorithms that keep Adam's two moments and nothing else (NAdam, RAdam,
// ADOPT, LAMB), in their public signatures' order.
constexpr std::array kMomentBuffers{
    BufferSpec{"params", nullptr, Role::Param},
    BufferSpec{"grads", nullptr, Role::Grad},
    BufferSpec{"exp_avgs", "exp_avg", Role::State},
    BufferSpec{"exp_avg_sqs", "exp_avg_sq", Role::State},
};

FUSEDOPT_ISA_BEGIN

template <class St, int Slots, int Accumulators>
struct Reduction {
  using storage = St;
  using O = typename St::compute_t;
  static constexpr int kBuffers = Slots;
  static constexpr int kAccumulators = Accumulators;
  static constexpr bool kWrites = false;
  static constexpr bool kPerTensor = false;
  FUSEDOPT_HOST_DEVICE static constexpr bool written(int) { return false; }
  FUSEDOPT_HOST_DEVICE static constexpr bool read(int) { return true; }
};

FUSEDOPT_ISA_END
}  // namespace fusedopt
