// Picks the CPU kernels' instruction set once, when the module loads: the best one compiled into
// this build that the running CPU supports, unless FUSEDOPT_SIMD names another.
#include <cstdlib>
#include <cstring>

#include "kernels.h"

namespace fusedopt::cpu {

#define FUSEDOPT_DECLARE_TABLE(ns) \
  namespace ns {                   \
  extern const KernelTable kTable; \
  }
#if defined(FUSEDOPT_HAVE_BASELINE)
FUSEDOPT_DECLARE_TABLE(isa_baseline)
#endif
#if defined(FUSEDOPT_HAVE_AVX2)
FUSEDOPT_DECLARE_TABLE(isa_avx2)
#endif
#if defined(FUSEDOPT_HAVE_AVX512)
FUSEDOPT_DECLARE_TABLE(isa_avx512)
#endif
#undef FUSEDOPT_DECLARE_TABLE

namespace {

bool cpu_has(const char* isa) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (std::strcmp(isa, "baseline") == 0) {
    // x86-64-v2
    return __builtin_cpu_supports("sse4.2") && __builtin_cpu_supports("popcnt");
  }
  if (std::strcmp(isa, "avx2") == 0) {
    // x86-64-v3 (the build uses -march=x86-64-v3: AVX2, FMA, BMI1/2, F16C, LZCNT, MOVBE)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c");
  }
  if (std::strcmp(isa, "avx512") == 0) {
    // x86-64-v4: AVX-512 F, BW, CD, DQ, VL
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl");
  }
  return false;
#else
  return std::strcmp(isa, "baseline") == 0;
#endif
}

struct Registry {
  IsaInfo isas[3];
  int count = 0;
  const KernelTable* active = nullptr;

  Registry() {
#if defined(FUSEDOPT_HAVE_BASELINE)
    add("baseline", &isa_baseline::kTable);
#endif
#if defined(FUSEDOPT_HAVE_AVX2)
    add("avx2", &isa_avx2::kTable);
#endif
#if defined(FUSEDOPT_HAVE_AVX512)
    add("avx512", &isa_avx512::kTable);
#endif
    for (int i = 0; i < count; ++i) {
      if (isas[i].supported) active = isas[i].table;
    }
    if (active == nullptr) active = isas[0].table;  // refused at import: see the bindings
  }
  void add(const char* name, const KernelTable* t) { isas[count++] = {name, t, cpu_has(name)}; }
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

int compiled_isas(const IsaInfo** out) {
  *out = registry().isas;
  return registry().count;
}

const KernelTable& active() { return *registry().active; }

bool select_isa(const char* name) {
  Registry& r = registry();
  for (int i = 0; i < r.count; ++i) {
    if (std::strcmp(r.isas[i].name, name) == 0 && r.isas[i].supported) {
      r.active = r.isas[i].table;
      return true;
    }
  }
  return false;
}

}  // namespace fusedopt::cpu
