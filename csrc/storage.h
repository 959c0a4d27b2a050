// Storage types: what a buffer holds in memory, as opposed to the type the math runs in.
//
// Note [Storage is not compute]
// Each buffer of a call has its own storage type, chosen by its role (Note [Kernel slots] in
// spec.h): the param's, the grad's, and one for the optimizer state. An element's buffers are
// loaded into registers of the compute type (opmath_t of the param's storage: float for 16-bit
// storage, the type itself otherwise), updated there by the algorithm's math, and each written
// buffer is rounded once as it is stored (load / store below). The algorithms never name a
// storage type: they are templates over a Storage, and the kernels are compiled for the
// combinations listed in StorageCombos and run those of StagedCombos through float32 staging
// (Note [Staged storage]): the one place a new storage type or combination is added. The
// bindings accept exactly those combinations (kCombos) and word their refusals from the same
// list.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common.h"

namespace fusedopt {

enum class DType : int { Float32 = 0, Float64 = 1, BFloat16 = 2, Float16 = 3 };
constexpr int kNumDTypes = 4;

constexpr const char* dtype_name(DType d) {
  return d == DType::Float32   ? "float32"
         : d == DType::Float64 ? "float64"
         : d == DType::BFloat16 ? "bfloat16"
                                : "float16";
}
constexpr int dtype_size(DType d) {
  return d == DType::Float64 ? 8 : d == DType::Float32 ? 4 : 2;
}

// The 16-bit storage types: their bits, as NumPy (float16; ml_dtypes.bfloat16), torch and CUDA
// hold them. Only load and store below read or make them.
struct bf16 {
  uint16_t bits;
};
struct f16 {
  uint16_t bits;
};

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
template <>
struct DTypeOf<bf16> {
  static constexpr DType value = DType::BFloat16;
};
template <>
struct DTypeOf<f16> {
  static constexpr DType value = DType::Float16;
};

// The compute type of a storage type.
template <class S>
struct OpMath {
  using type = S;
};
template <>
struct OpMath<bf16> {
  using type = float;
};
template <>
struct OpMath<f16> {
  using type = float;
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

// Note [Staged storage]
// The kernels are compiled (for every algorithm, variant and instruction set) for the
// combinations of StorageCombos only: each one more costs a minute of compiler time per
// instruction set. The combinations with 16-bit buffers (StagedCombos) run the float32 kernels
// instead, through staging: the CPU driver converts a tile of kStageTile elements of each 16-bit
// buffer to float32 in a buffer that stays in L1 (exactly: every bfloat16 and float16 is a
// float32), runs the float32 loop over it, and rounds the written buffers back, once, as they are
// stored (cpu/driver.h). The bits are those a kernel compiled for the combination would give:
// the math is the same float32 operations element by element, and a tile is a whole number of a
// reduction's rows (Note [Deterministic reductions]), so sums are added in the same order too.
using StorageCombos = TypeList<Storage<float, float, float>, Storage<double, double, double>>;
constexpr int kNumCompiledCombos = StorageCombos::size;

// Note [Fused 16-bit combinations]
// Staging costs instructions: where the CPU is not waiting for memory (2 cores, or data in
// cache) bfloat16 Adam ran at 38% of the memory wall staged. The four combinations most training
// uses are also compiled as they are, for the CPU kernels only (CpuCombos; the CUDA kernels and
// the CUDA driver's emulation are not compiled for them): bfloat16 params and grads with float32
// or bfloat16 state; float32 params and grads with bfloat16 state (Adam on a 2-vCPU Zen 5: 75% of
// its memory wall staged, 87% compiled); and float32 params with bfloat16 grads, the optimizer
// step of ZeRO-Offload (92% staged, 100% compiled). Each adds about a quarter of a minute of
// compiler time per instruction set. They take the staged path for what only it does
// (is_staged): stochastic rounding (Note [Stochastic rounding]), Kahan compensation of float16
// params (Note [Kahan summation]; but Note [Compiled Kahan summation]) and param copies (Note
// [Param copies]; but Note [Compiled param copies]). Same bits either way.
using CpuFusedCombos = TypeList<Storage<bf16, bf16, float>, Storage<bf16, bf16, bf16>,
                                Storage<float, float, bf16>, Storage<float, bf16, float>>;
constexpr int kNumCpuCombos = kNumCompiledCombos + CpuFusedCombos::size;

// The staged combinations, which the README lists ("Low precision"): float16 params with float32
// or bfloat16 state; float32 params with float16 grads, or with bfloat16 grads and state (the
// optimizer step of mixed-precision training, whose float32 params are the master weights); and
// those of CpuFusedCombos, staged where they store 16-bit values with stochastic rounding, or
// write copies (but Notes [Compiled param copies] and [Compiled Kahan summation]).
using StagedCombos =
    TypeList<Storage<f16, f16, float>, Storage<f16, f16, bf16>, Storage<float, f16, float>,
             Storage<float, bf16, bf16>, Storage<float, f16, bf16>>;
constexpr int kNumStagedCombos = StagedCombos::size;

// Every combination, compiled then staged: a combination's index is its position here.
template <class... A, class... B>
constexpr TypeList<A..., B...> concat(TypeList<A...>, TypeList<B...>) {
  return {};
}
using CpuCombos = decltype(concat(StorageCombos{}, CpuFusedCombos{}));
using AllCombos = decltype(concat(CpuCombos{}, StagedCombos{}));

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
// The first combination listed with a given param and state dtype has the param's grad dtype.
constexpr auto kCombos = combos_of(AllCombos{});
constexpr int kNumCombos = AllCombos::size;

// The index of (param, grad, state) in kCombos, or -1.
constexpr int combo_index(DType param, DType grad, DType state) {
  for (int i = 0; i < kNumCombos; ++i) {
    const Combo& c = kCombos.at[i];
    if (c.param == param && c.grad == grad && c.state == state) return i;
  }
  return -1;
}

// Whether the CPU driver stages combination `combo`, given whether its call does what only
// staging does (`staged_only`: stochastic rounding; Kahan compensation but that of Note [Compiled
// Kahan summation]; param copies but those of Note [Compiled param copies]).
constexpr bool is_staged(int combo, bool staged_only = false) {
  return combo >= kNumCpuCombos || (staged_only && combo >= kNumCompiledCombos);
}

// Whether a call of combination `combo` with param copies of DType `copy` (or -1) stores 16-bit
// values, the only ones stochastic rounding rounds (grads are never stored): float32 params
// and state updated from bfloat16 grads (ZeRO-Offload's step) stay compiled with it on.
constexpr bool stores_16_bit(int combo, int copy) {
  const Combo& c = kCombos.at[combo];
  auto narrow = [](DType d) { return d == DType::BFloat16 || d == DType::Float16; };
  return narrow(c.param) || narrow(c.state) || copy >= 0;
}

// Note [Compiled param copies]
// Param copies (Note [Param copies] in cpu/driver.h) are written from the staging tile, but for
// ZeRO-Offload's step (float32 params and state, bfloat16 grads) with bfloat16 copies, the step
// that sends the params back to the GPU: its compiled loop stores each new param's rounding too
// (Adam on a 2-vCPU Zen 5: staged at 88% of the memory wall). The copy loops of that one
// combination are all the compile time it adds. Same bits either way.
using CompiledCopyStorage = Storage<float, bf16, float>;
constexpr int kCompiledCopyCombo =
    combo_index(DType::Float32, DType::BFloat16, DType::Float32);
static_assert(kCompiledCopyCombo >= kNumCompiledCombos && kCompiledCopyCombo < kNumCpuCombos,
              "the compiled-copy combination is one of CpuFusedCombos");
// Whether a call of combination `combo` with param copies of DType `copy` (or -1) must stage.
constexpr bool copies_staged(int combo, int copy) {
  return copy >= 0 &&
         !(combo == kCompiledCopyCombo && copy == static_cast<int>(DType::BFloat16));
}

// Note [Compiled Kahan summation]
// Staged, Kahan compensation (Note [Kahan summation]) costs a pass over each tile in kahan_out
// (cpu/driver.h) besides the staging. So the compiled combinations with bfloat16 params (of
// CpuFusedCombos) store each new param with its compensation in their own loop, by the same
// kahan_store, in place of its plain store; float16 params stay staged. Same bits either way.
// Adam over bfloat16 params with float32 state, on a 2-vCPU Zen 5 (AVX-512): 52-55% of the memory
// wall staged, 91-97% compiled (on a 2-vCPU Zen 3 with AVX2 the same change gained nothing: its
// cost there was kahan_store's instructions).
template <class St>
constexpr bool kKahanCompiled = std::is_same_v<typename St::param_t, bf16>;
// Whether a Kahan-compensated call of combination `combo` must stage.
constexpr bool kahan_staged(int combo) {
  return !(combo < kNumCpuCombos && kCombos.at[combo].param == DType::BFloat16);
}

// The buffer type of slot `slot` in combination `combo` (Note [Kernel slots]).
constexpr DType slot_dtype(int combo, int slot) {
  const Combo& c = kCombos.at[combo];
  return slot == 0 ? c.param : slot == 1 ? c.grad : c.state;
}

// Calls f(Storage{}) for combination `combo`: its Storage where it is one of `Compiled`, else
// float32's (the CPU driver stages its 16-bit buffers, Note [Staged storage]; the bindings never
// hand the CUDA kernels such a combination).
template <class Compiled = StorageCombos, class F>
void combo_switch(int combo, bool staged, F&& f) {
  type_switch(Compiled{}, staged || combo >= Compiled::size ? 0 : combo, f);
}

FUSEDOPT_ISA_BEGIN

// A stored value as the compute type, and back, rounded once to nearest (ties to even).
template <class O, class S>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE O load(S x) {
  return static_cast<O>(x);
}
template <class S, class O>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE S store(O x) {
  return static_cast<S>(x);
}

// A float32's bits, and back.
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE uint32_t bits_of(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  return u;
#endif
}
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE float float_of(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
#endif
}

// Note [Rounding to 16 bits]
// Both 16-bit types are converted with integer operations and selects only (no table, no branch,
// no library call): the same bits on every instruction set and on the GPU, and loops of them
// vectorize. Loading is exact. Storing rounds to nearest, ties to even, as torch, NumPy and
// ml_dtypes do; what overflows becomes an infinity of its sign; a NaN stays a NaN of its sign,
// made quiet, keeping the top bits of its payload.
//
// bfloat16 is the upper half of a float32: rounding adds 0x7fff, plus one when the kept half is
// odd, and cuts. Its NaN test is the float comparison f != f, and the select is made on the 32-bit
// values before the cut: GCC then emits one vector compare and one blend per 8 values, where an
// integer test of the bits became a compare, a blend and a pack of its own, after the cut (all-
// bfloat16 Adam, in cache, AVX2: 0.56 -> 0.73 Gelem/s). Never built with -ffinite-math-only.
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE float bf16_to_float(uint16_t h) {
  return float_of(static_cast<uint32_t>(h) << 16);
}
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE uint16_t float_to_bf16(float f) {
  const uint32_t u = bits_of(f);
  uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  r = f != f ? ((u >> 16) | 0x40u) : r;  // NaN
  return static_cast<uint16_t>(r);
}

// float16 (1 sign, 5 exponent, 10 mantissa bits; bias 15). A normal result is float32's bits
// rounded at bit 13 as bfloat16's at bit 16, with the exponent rebiased by 127 - 15 = 112; one at
// or past 65520 (halfway from the largest, 65504, to 2^16) is an infinity; one below 2^-14 (a
// subnormal or zero, in steps of 2^-24) is rounded by the FPU itself: 0.5f + |f| rounds |f| to
// a multiple of 2^-24, the ulp of 0.5f, and the bits past 0.5f's are the result (0x400, the
// smallest normal, when it rounds up to 2^-14).
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  const uint32_t normal = ((e + 112u) << 23) | (m << 13);
  // e == 31: inf, or a NaN made quiet (as F16C's vcvtph2ps makes it)
  const uint32_t special = 0x7f800000u | (m << 13) | (m != 0u ? 0x400000u : 0u);
  const uint32_t small = bits_of(static_cast<float>(m) * 0x1p-24f);  // e == 0: exact
  uint32_t r = normal;
  r = e == 0u ? small : r;
  r = e == 31u ? special : r;
  return float_of(sign | r);
}
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE uint16_t float_to_f16(float f) {
  const uint32_t u = bits_of(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  const uint32_t nan = 0x7e00u | ((a >> 13) & 0x3ffu);
  const uint32_t normal = (a + 0xfffu + ((a >> 13) & 1u) - (112u << 23)) >> 13;
  const uint32_t small = bits_of(float_of(a) + 0.5f) - bits_of(0.5f);
  uint32_t r = normal;  // one select at a time: GCC vectorizes these, not a nested ?:
  r = a < 0x38800000u ? small : r;
  r = a >= 0x477ff000u ? 0x7c00u : r;
  r = a > 0x7f800000u ? nan : r;
  return static_cast<uint16_t>(sign | r);
}

// Note [Stochastic rounding]
// With stochastic rounding a value between two neighbours of the 16-bit type is stored as the
// upper one with probability (its distance from the lower) / (their distance): unbiased, and
// never outside the two. The randomness is counter-based: 32 bits per stored value from
// sr_bits(element, key), a fixed function of the element's index in its tensor and a key made
// of (seed, step, tensor, buffer) (cpu/driver.h), so results do not depend on the thread count,
// the SIMD path or the device. bfloat16 adds 16 random bits below the kept half before cutting
// (the carry is the round up). float16 adds 13 below its mantissa in the normal range; below
// 2^-14 it adds a uniform [0, 1) of 24 bits to |f| * 2^24 and truncates, whose float32 sum
// rounds at 2^-14 of an ulp at most (a bias that small, in the subnormal range only).
// NaN stays NaN (made quiet); infinities stay; a value past the largest rounds up to infinity
// with the probability of its distance to it, as if infinity were the next value.

// A 32-bit mix (the "lowbias32" bijection of C. Wellons' hash-prospector): integer multiplies
// and shifts, which vectorize.
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

// splitmix64's finalizer: the keys, once per run and per tile.
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The key of a run: its optimizer's seed and its step.
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE uint64_t sr_run_key(uint64_t seed, int64_t step) {
  return mix64(seed ^ mix64(static_cast<uint64_t>(step)));
}

// The random bits of the element whose index in its tensor has low 32 bits `i`, under the key
// (k_lo, k_hi) of its tensor, buffer, step and seed (and the index's high bits).
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE uint32_t sr_bits(uint32_t i, uint32_t k_lo, uint32_t k_hi) {
  return mix32(mix32(i ^ k_lo) + k_hi);
}

FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE uint16_t float_to_bf16_sr(float f, uint32_t r) {
  const uint32_t u = bits_of(f);
  uint32_t res = (u + (r >> 16)) >> 16;
  res = f != f ? ((u >> 16) | 0x40u) : res;  // NaN, as in float_to_bf16
  return static_cast<uint16_t>(res);
}

FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE uint16_t float_to_f16_sr(float f, uint32_t r) {
  const uint32_t u = bits_of(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  const uint32_t nan = 0x7e00u | ((a >> 13) & 0x3ffu);
  const uint32_t normal = (a + (r >> 19) - (112u << 23)) >> 13;
  const bool tiny = a < 0x38800000u;
  const float scaled = float_of(tiny ? a : 0u) * 0x1p24f;  // in [0, 1024): exact
  const uint32_t small =
      static_cast<uint32_t>(scaled + static_cast<float>(r >> 8) * 0x1p-24f);
  uint32_t res = normal;
  res = tiny ? small : res;
  res = a >= 0x47800000u ? 0x7c00u : res;  // 2^16 and past: infinity
  res = a > 0x7f800000u ? nan : res;
  return static_cast<uint16_t>(sign | res);
}

// The bits of x stored into the 16-bit type S with stochastic rounding under random bits r.
template <class S>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE uint16_t float_to_sr(float x, uint32_t r) {
  if constexpr (std::is_same_v<S, bf16>) {
    return float_to_bf16_sr(x, r);
  } else {
    static_assert(std::is_same_v<S, f16>, "stochastic rounding stores bfloat16 or float16");
    return float_to_f16_sr(x, r);
  }
}

template <>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE float load<float, bf16>(bf16 x) {
  return bf16_to_float(x.bits);
}
template <>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE bf16 store<bf16, float>(float x) {
  return bf16{float_to_bf16(x)};
}
template <>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE float load<float, f16>(f16 x) {
  return f16_to_float(x.bits);
}
template <>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE f16 store<f16, float>(float x) {
  return f16{float_to_f16(x)};
}

// Note [Kahan summation]
// With Kahan summation a 16-bit param p carries a compensation c of its own dtype: what rounding
// p dropped of the updates so far, added back into the next. A step that computes the param's
// new value q in float32 (from p, as without it) stores
//   u = c + (q - p),  p' = round(p + u),  c' = round(u - (p' - p))
// (q - p and p' - p are exact in float32 wherever the update is smaller than p; u - (p' - p) is
// the part of u that p' could not hold). Updates far below half an ulp of p then accumulate in c
// until they move p, instead of being rounded away at every step. A p that is not finite (inf,
// NaN) is stored as without compensation, p' = round(q) (inf - inf would make an infinite param
// NaN), and where p or p' is not finite c' is 0: nothing is left to compensate.
// On the bits of a 16-bit type S (GCC vectorizes loops of these, not of the structs' copies).
template <class S>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void kahan_store(float q, uint16_t* p, uint16_t* c) {
  const float old = load<float>(S{*p});
  const float u = load<float>(S{*c}) + (q - old);
  const bool was = (bits_of(old) & 0x7f800000u) != 0x7f800000u;  // finite
  const uint16_t stored = store<S>(was ? old + u : q).bits;
  const float now = load<float>(S{stored});
  const bool is = (bits_of(now) & 0x7f800000u) != 0x7f800000u;
  *c = store<S>(was && is ? u - (now - old) : 0.0f).bits;
  *p = stored;
}

FUSEDOPT_ISA_END

}  // namespace fusedopt
