// What every algorithm header includes: the spec vocabulary (spec.h), the storage types
// (storage.h), and the bases of the algorithm objects a spec's dispatch hands to the drivers.
//
// An algorithm object is the per-element step of one variant, for one Storage, with its step
// scalars already folded (Note [Step scalars in double]):
//   using storage;  using O (the compute type);  kBuffers (slots, Note [Kernel slots])
//   an update:      void operator()(O* r) const           r[k] is slot k, loaded; written back
//   a reduction:    void operator()(O* r, double* c) const
//                   adds nothing to r it writes (kWrites false) and sets c[0..kAccumulators) to
//                   this element's terms of the per-tensor sums (Note [Deterministic reductions]
//                   in cpu/driver.h)
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
  // Slot 1 (the grads) is only read; every other slot is written back.
  FUSEDOPT_HOST_DEVICE static constexpr bool written(int slot) { return slot != 1; }
};

template <class St, int Slots, int Accumulators>
struct Reduction {
  using storage = St;
  using O = typename St::compute_t;
  static constexpr int kBuffers = Slots;
  static constexpr int kAccumulators = Accumulators;
  static constexpr bool kWrites = false;
  FUSEDOPT_HOST_DEVICE static constexpr bool written(int) { return false; }
};

FUSEDOPT_ISA_END
}  // namespace fusedopt
