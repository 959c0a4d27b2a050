// One build of every CPU kernel for one instruction set (FUSEDOPT_ISA_NS, FUSEDOPT_ISA_NAME set by
// CMake; see Note [One namespace per instruction set]). Each entry only turns run-time flags into
// an algorithm object (the *_dispatch of csrc/algorithms/) and hands it to the driver.
#include "apply.h"

#ifndef FUSEDOPT_ISA_NAME
#define FUSEDOPT_ISA_NAME "generic"
#endif

namespace fusedopt::cpu {
FUSEDOPT_ISA_BEGIN
namespace {

// The benchmark ceiling: the same loads and stores as an algorithm of K buffers, trivial math.
template <class S, int K>
struct RmwAlgo {
  using storage_t = S;
  using O = opmath_t<S>;
  static constexpr int kBuffers = K;
  void operator()(O* r) const {
    for (int k = 0; k < K; ++k) {
      if (k != 1) r[k] = r[k] + r[1];
    }
  }
};

auto runner(const WorkView& w) {
  return [&w](const auto& algo) { apply(w, algo); };
}

void sgd_k(DType dt, const WorkView& w, const SgdHyper& h, int64_t step) {
  sgd_dispatch(dt, h, step, runner(w));
}
void adagrad_k(DType dt, const WorkView& w, const AdagradHyper& h, int64_t step) {
  adagrad_dispatch(dt, h, step, runner(w));
}
void adadelta_k(DType dt, const WorkView& w, const AdadeltaHyper& h, int64_t step) {
  adadelta_dispatch(dt, h, step, runner(w));
}
void rmsprop_k(DType dt, const WorkView& w, const RmspropHyper& h, int64_t step) {
  rmsprop_dispatch(dt, h, step, runner(w));
}
void adam_k(DType dt, const WorkView& w, const AdamHyper& h, int64_t step) {
  adam_dispatch(dt, h, step, runner(w));
}
void nadam_k(DType dt, const WorkView& w, const NadamHyper& h, int64_t step, double mu_prev,
             double* mu_new) {
  nadam_dispatch(dt, h, step, mu_prev, mu_new, runner(w));
}
void adamax_k(DType dt, const WorkView& w, const AdamaxHyper& h, int64_t step) {
  adamax_dispatch(dt, h, step, runner(w));
}
void ewa_k(DType dt, const WorkView& w, const EwaHyper& h) { ewa_dispatch(dt, h, runner(w)); }
void ewa_readout_k(DType dt, const WorkView& w, const EwaHyper& h, int64_t step) {
  ewa_readout_dispatch(dt, h, step, runner(w));
}

void rmw_k(DType dt, const WorkView& w, int nbuf) {
  dtype_switch(dt, [&](auto sv) {
    using S = decltype(sv);
    switch (nbuf) {
      case 2: apply(w, RmwAlgo<S, 2>{}); break;
      case 3: apply(w, RmwAlgo<S, 3>{}); break;
      case 4: apply(w, RmwAlgo<S, 4>{}); break;
      case 5: apply(w, RmwAlgo<S, 5>{}); break;
      default: break;
    }
  });
}

}  // namespace

extern const KernelTable kTable;
const KernelTable kTable = {FUSEDOPT_ISA_NAME, sgd_k,  adagrad_k,     adadelta_k,
                            rmsprop_k,         adam_k, nadam_k,       adamax_k,
                            ewa_k,             ewa_readout_k, rmw_k};

FUSEDOPT_ISA_END
}  // namespace fusedopt::cpu
