// Storage types: what a buffer holds in memory, as opposed to the type the math runs in.
//
// Note [Storage is not compute]
// Each buffer of a call has its own storage type, chosen by its role (Note [Kernel slots] in
// spec.h): the param's, the grad's, and one for the optimizer state. An element's buffers are
// loaded into registers of the compute type (opmath_t of the param's storage: float for 16-bit
// storage, the type itself otherwise), updated there by the algorithm's math, and each written
// buffer is rounded once as it is stored (load / store below). The algorithms never name a
// storage type: they are templates over a Storage, and the kernels are compiled for the
// combinations listed in StorageCombos, the one place a new storage type or combination is added.
// The bindings accept exactly those combinations (combo_index) and word their refusals from the
// same list.
#pragma once

#include <type_traits>

#include "common.h"

namespace fusedopt {

enum class DType : int { Float32 = 0, Float64 = 1 };
constexpr int kNumDTypes = 2;

constexpr const char* dtype_name(DType d) { return d == DType::Float32 ? "float32" : "float64"; }
constexpr int dtype_size(DType d) { return d == DType::Float32 ? 4 : 8; }

template <class T>
struct DTypeOf;
template <>
struct DTypeOf<float> {
  static constexpr DType value = DType::Float32;
};
template <>
struct DTypeOf<double> {
  static constexpr DType value = DType::Float64;
};

// The compute type of a storage type.
template <class S>
struct OpMath {
  using type = S;
};
template <class S>
using opmath_t = typename OpMath<S>::type;

// One storage combination: the param's type, the grad's, and the state's (every state buffer of a
// call shares one). Slot k of a kernel (Note [Kernel slots]) holds slot_t<k>.
template <class P, class G, class S>
struct Storage {
  using param_t = P;
  using grad_t = G;
  using state_t = S;
  using compute_t = opmath_t<P>;
  template <int Slot>
  using slot_t = std::conditional_t<Slot == 0, P, std::conditional_t<Slot == 1, G, S>>;
};

// Every combination the kernels are compiled for.
using StorageCombos = TypeList<Storage<float, float, float>, Storage<double, double, double>>;

struct Combo {
  DType param, grad, state;
};

template <class... St>
constexpr auto combos_of(TypeList<St...>) {
  struct Table {
    Combo at[sizeof...(St)];
  };
  return Table{{Combo{DTypeOf<typename St::param_t>::value, DTypeOf<typename St::grad_t>::value,
                      DTypeOf<typename St::state_t>::value}...}};
}
constexpr auto kCombos = combos_of(StorageCombos{});
constexpr int kNumCombos = StorageCombos::size;

// The index of (param, grad, state) in StorageCombos, or -1.
constexpr int combo_index(DType param, DType grad, DType state) {
  for (int i = 0; i < kNumCombos; ++i) {
    const Combo& c = kCombos.at[i];
    if (c.param == param && c.grad == grad && c.state == state) return i;
  }
  return -1;
}

// Calls f(Storage{}) for combination `combo`.
template <class F>
void combo_switch(int combo, F&& f) {
  type_switch(StorageCombos{}, combo, f);
}

FUSEDOPT_ISA_BEGIN

// A stored value as the compute type, and back, rounded once.
template <class O, class S>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE O load(S x) {
  return static_cast<O>(x);
}
template <class S, class O>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE S store(O x) {
  return static_cast<S>(x);
}

FUSEDOPT_ISA_END

}  // namespace fusedopt
