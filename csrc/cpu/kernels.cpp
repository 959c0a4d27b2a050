// One build of every CPU kernel for one instruction set (FUSEDOPT_ISA_NS, FUSEDOPT_ISA_NAME set by
// CMake; see Note [One namespace per instruction set]). The table is generated from the registry:
// each entry turns the spec's run-time flags into an algorithm object (its dispatch) for the
// work list's storage combination and hands it to the driver.
#include <type_traits>

#include "driver.h"
#include "factored.h"

#ifndef FUSEDOPT_ISA_NAME
#define FUSEDOPT_ISA_NAME "generic"
#endif

namespace fusedopt::cpu {
FUSEDOPT_ISA_BEGIN
namespace {

template <class Spec>
struct Entry {
  static void run(const WorkView& w, const Launch& l) {
    const bool staged =
        is_staged(w.combo, (w.stochastic && stores_16_bit(w.combo, w.copy)) ||
                               (w.kahan && kahan_staged(w.combo)) || copies_staged(w.combo, w.copy));
    with_algorithm<Spec, CpuCombos>(l.hyper, l.step, w.combo, [&](const auto& algo) {
      using A = std::decay_t<decltype(algo)>;
      if constexpr (A::kBuffers > 1 && A::read(1)) {  // Note [The fused unscale]
        if (l.step.grad_factor != 1.0) {
          apply(w, GradScaled<A>{algo, static_cast<typename A::O>(l.step.grad_factor)}, l.out);
          return;
        }
      }
      apply(w, algo, l.out);
    }, staged);
  }
};

// The benchmark ceiling: the loads and stores of an update of K slots that writes W of them
// (slot 0, then the states in order), trivial math: each written slot adds the sum of the slots
// only read.
template <class St, int K, int W>
struct RmwAlgo : Update<St, K> {
  using O = typename St::compute_t;
  static constexpr bool written(int slot) { return slot != 1 && (slot == 0 ? W >= 1 : slot < W + 1); }
  void operator()(O* r) const {
    O read = r[1];
    for (int k = 2; k < K; ++k) {
      if (!written(k)) read = read + r[k];
    }
    for (int k = 0; k < K; ++k) {
      if (written(k)) r[k] = r[k] + read;
    }
  }
};

// ... and of a reduction pass over K slots (W = 0): their sum.
template <class St, int K>
struct RmwSumAlgo : Reduction<St, K, 1> {
  using O = typename St::compute_t;
  void operator()(const O* r, double* c) const {
    O x = r[0];
    for (int k = 1; k < K; ++k) x = x + r[k];
    c[0] = static_cast<double>(x);
  }
};

template <class St, int K, int... W>
void rmw_of(const WorkView& w, int nwrite, std::integer_sequence<int, W...>) {
  if (nwrite == 0) {  // each chunk's sum, discarded
    std::vector<double> partial(static_cast<size_t>(w.nchunks));
    for_each_chunk(w, RmwSumAlgo<St, K>{}, partial.data());
    return;
  }
  ((nwrite == W + 1 ? apply(w, RmwAlgo<St, K, W + 1>{}, nullptr) : void()), ...);
}

// A staged combination's ceiling moves its buffers' bytes as unsigned integers of their widths:
// converting 16-bit values is the kernels' work, not the memory's (float16's conversion in
// integer operations would make the "ceiling" slower than a kernel that stages with F16C).
template <class T>
struct BitsOf {
  using type = T;
};
template <>
struct BitsOf<float> {
  using type = uint32_t;
};
template <>
struct BitsOf<bf16> {
  using type = uint16_t;
};
template <>
struct BitsOf<f16> {
  using type = uint16_t;
};
template <class St>
using BitsStorage = Storage<typename BitsOf<typename St::param_t>::type,
                            typename BitsOf<typename St::grad_t>::type,
                            typename BitsOf<typename St::state_t>::type>;

// Over the combination's own buffers, through the same driver.
void rmw_k(const WorkView& w, int nbuf, int nwrite) {
  type_switch(AllCombos{}, w.combo, [&](auto st) {
    using S0 = decltype(st);
    using St = std::conditional_t<std::is_same_v<S0, Storage<float, float, float>> ||
                                      std::is_same_v<S0, Storage<double, double, double>>,
                                  S0, BitsStorage<S0>>;  // (as the 16-bit kernels' memory)
    switch (nbuf) {
      case 2: rmw_of<St, 2>(w, nwrite, std::make_integer_sequence<int, 1>{}); break;
      case 3: rmw_of<St, 3>(w, nwrite, std::make_integer_sequence<int, 2>{}); break;
      case 4: rmw_of<St, 4>(w, nwrite, std::make_integer_sequence<int, 3>{}); break;
      case 5: rmw_of<St, 5>(w, nwrite, std::make_integer_sequence<int, 4>{}); break;
      default: break;
    }
  });
}

void adafactor_k(const AdafactorTensor* ts, int64_t n, const AdafactorHyper& h, int max_threads) {
  if (n == 0) return;
  switch (ts[0].dtype) {  // one param and one grad dtype per call (the binding groups them)
    case DType::Float32:
      if (ts[0].grad_dtype == DType::BFloat16) return adafactor_of<float, bf16>(ts, n, h, max_threads);
      if (ts[0].grad_dtype == DType::Float16) return adafactor_of<float, f16>(ts, n, h, max_threads);
      return adafactor_of<float>(ts, n, h, max_threads);
    case DType::Float64: return adafactor_of<double>(ts, n, h, max_threads);
    case DType::BFloat16: return adafactor_of<bf16>(ts, n, h, max_threads);
    case DType::Float16: return adafactor_of<f16>(ts, n, h, max_threads);
  }
}

}  // namespace

extern const KernelTable kTable;
constexpr auto kEntries = table_of<Entry>(Specs{});
const KernelTable kTable = [] {
  KernelTable t{FUSEDOPT_ISA_NAME, {}, &rmw_k, &adafactor_k};
  for (int i = 0; i < kNumSpecs; ++i) t.kernels[i] = kEntries[i];
  return t;
}();

FUSEDOPT_ISA_END
}  // namespace fusedopt::cpu
