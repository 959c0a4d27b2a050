// Shared vocabulary of the kernels: host/device markers, the per-instruction-set namespace, the
// static switches that turn run-time flags into template arguments, and the framework-free tensor
// list. Nothing here knows Python, OpenMP or the CUDA runtime.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>

#if defined(__CUDACC__)
#define FUSEDOPT_HOST_DEVICE __host__ __device__
#define FUSEDOPT_INLINE __forceinline__
#else
#define FUSEDOPT_HOST_DEVICE
#define FUSEDOPT_INLINE inline __attribute__((always_inline))
#endif

// Note [One namespace per instruction set]
// The CPU kernels are compiled several times, once per instruction set (baseline, AVX2, AVX-512),
// and linked into one module. Any inline function emitted by two of those builds under the same
// name would be merged by the linker, and an AVX-512 copy could then run on a CPU without AVX-512.
// So every function of the algorithm headers lives in a namespace named after the build
// (FUSEDOPT_ISA_NS, set by CMake for each kernel object; `generic` elsewhere). Plain aggregates
// (the hyper-parameter structs, the specs) carry no code and stay in `fusedopt` so every build
// shares them.
#ifndef FUSEDOPT_ISA_NS
#define FUSEDOPT_ISA_NS generic
#endif
#define FUSEDOPT_ISA_BEGIN inline namespace FUSEDOPT_ISA_NS {
#define FUSEDOPT_ISA_END }

namespace fusedopt {

// Largest number of buffers one kernel touches per element (Adam+AMSGrad: param, grad, exp_avg,
// exp_avg_sq, max_exp_avg_sq).
constexpr int kMaxBuffers = 5;

// One tensor of a multi-tensor call: its buffers' base pointers, in the kernel's slot order
// (Note [Kernel slots] in spec.h), and its element count.
struct TensorRef {
  void* ptr[kMaxBuffers];
  int64_t numel;
  // the 16-bit copy of the updated param the CPU driver writes, or the param's Kahan
  // compensation (WorkView::kahan), or null
  void* copy;
};

template <class... T>
struct TypeList {
  static constexpr int size = sizeof...(T);
};

// Calls f(T{}) for the index-th type of a TypeList (nothing when out of range).
template <class... T, class F>
void type_switch(TypeList<T...>, int index, F&& f) {
  int i = 0;
  ((i++ == index ? (void)f(T{}) : void()), ...);
}

// Weight decay flavours: none, L2 folded into the gradient (coupled), or decoupled (AdamW).
enum class WeightDecay : int { None = 0, L2 = 1, Decoupled = 2 };

template <bool B>
using bool_c = std::integral_constant<bool, B>;
template <WeightDecay W>
using wd_c = std::integral_constant<WeightDecay, W>;

// Static switches (the flash-attention static_switch idea): call f with the run-time value as a
// compile-time constant, so variants are resolved once per call, never per element.
template <class F>
void bool_switch(bool b, F&& f) {
  if (b) {
    f(bool_c<true>{});
  } else {
    f(bool_c<false>{});
  }
}

template <class F>
void wd_switch(WeightDecay w, F&& f) {
  switch (w) {
    case WeightDecay::None: f(wd_c<WeightDecay::None>{}); break;
    case WeightDecay::L2: f(wd_c<WeightDecay::L2>{}); break;
    case WeightDecay::Decoupled: f(wd_c<WeightDecay::Decoupled>{}); break;
  }
}

// Coupled (L2) weight decay when weight_decay != 0, or none (a zero decay must not touch g: 0 * p
// is NaN where p is infinite): the two flavours of the algorithms without decoupled decay, so that
// only those two variants are compiled for them.
template <class F>
void coupled_switch(double weight_decay, F&& f) {
  if (weight_decay != 0.0) {
    f(wd_c<WeightDecay::L2>{});
  } else {
    f(wd_c<WeightDecay::None>{});
  }
}

FUSEDOPT_ISA_BEGIN

// L2 decay when weight_decay != 0, none otherwise: a zero decay must not touch g, since
// 0 * p is NaN where p is infinite.
inline WeightDecay coupled_decay(double weight_decay) {
  return weight_decay != 0.0 ? WeightDecay::L2 : WeightDecay::None;
}

// Decoupled decay (p *= 1 - lr * wd) when asked for and weight_decay != 0; else coupled_decay.
inline WeightDecay decay_mode(double weight_decay, bool decoupled) {
  if (!decoupled) return coupled_decay(weight_decay);
  return weight_decay != 0.0 ? WeightDecay::Decoupled : WeightDecay::None;
}

FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE float fo_sqrt(float x) { return ::sqrtf(x); }
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE double fo_sqrt(double x) { return ::sqrt(x); }
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE float fo_abs(float x) { return ::fabsf(x); }
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE double fo_abs(double x) { return ::fabs(x); }

// max that propagates NaN from either side, like torch.maximum / torch.amax
// (std::max and fmax drop a NaN on one side, which would hide a diverged run).
template <class O>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE O nan_max(O a, O b) {
  return (a > b || a != a) ? a : b;
}

FUSEDOPT_ISA_END

}  // namespace fusedopt
