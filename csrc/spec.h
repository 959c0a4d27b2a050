// The vocabulary of an algorithm's spec: what its header declares beside its math, and everything
// else (the bindings, the Python front ends, the type stubs) derives from. No code runs here.
//
// A spec is a struct with
//   kName       the public name ("adam")
//   Hyper       the hyper-parameter struct the math reads
//   kBuffers    its buffer lists, in the public signature's order (BufferSpec)
//   kHypers     its hyper-parameters, in the public signature's order (HyperSpec<Hyper>)
//   kScalars    per-call scalar state the caller keeps between steps (a running product)
//   kHasStep    whether a call takes the 1-based step
//   kReduce     0 for an update; K for a reduction that returns K float64 sums per tensor
//   kPasses     1; or the passes of an update that needs reductions first (Note [Passes])
//   Kernel      the spec whose math runs (itself, or the spec it is a variant of: AdamW -> Adam)
//   dispatch    (Kernel) turns the run-time flags into an algorithm object for one Storage
// and optionally
//   check(h)               a rule across hyper-parameters: nullptr, or torch's error text
//   advance(h, t, in, out) the scalar state after step t (out), from the state before it (in)
//   initial(h, t, out)     the scalar state before step t of a run that started at step 1
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "common.h"

namespace fusedopt {

// Note [Kernel slots]
// A kernel sees an element's buffers in slots: slot 0 is the reference buffer, whose dtype, shape
// and memory order every other buffer of its tensor must match (the params; or what stands for
// them, such as the outputs of EWA's read-out); slot 1 is the read-only input (the grads; absent
// from a reduction over one list); slots 2.. are the state buffers in the order the spec lists
// them, leaving out those the hyper-parameters switch off. So the slots follow from the roles,
// whatever order the public signature takes the lists in, and an algorithm's math receives its
// buffers as r[0], r[1], r[2], ... in that order.
enum class Role : uint8_t {
  Param,  // slot 0, written
  Input,  // slot 0, only read (a reduction's list)
  Grad,   // slot 1, only read
  State,  // slots 2.., written
};

// When an optional buffer list is used: always, or by a condition on one hyper-parameter.
enum class When : uint8_t { Always, Flag, NonZero, Positive };

struct BufferSpec {
  const char* list;             // the argument: "exp_avgs"
  const char* state;            // the optimizer-state name ("exp_avg"); nullptr but for states
  Role role;
  const char* hyper = nullptr;  // the hyper-parameter that switches the list on
  When when = When::Always;
  const char* init = nullptr;   // the hyper-parameter a new state buffer starts at (else 0)
};

enum class HKind : uint8_t {
  Lr,    // the learning rate: given at every run, a schedule in the optimizer classes
  Real,  // a float
  Flag,  // a bool
  Pair,  // two floats (betas)
  // A float that may change at every step (ADOPT's clip_lambda): a number, None (+inf: no bound),
  // or a callable of the number of completed steps (a Python float), which a bound call calls at
  // each run. Its default is that count to the power def0 (Note [Hyper-parameters of the step]).
  StepFn,
};

// Note [Hyper-parameters of the step]
// A StepFn hyper-parameter is a function of the step, as a reference implementation gives it
// (ADOPT's `clip_lambda=lambda step: step**0.25`). Python hands the callable itself to bind, which
// keeps it; each run calls it with the count of steps completed before this one (step - 1, as a
// float; not before the spec's from_step, where the value is +inf) and checks the number it
// returns against the range before anything is written. Its
// default, the callable n -> n ** def0, is the picklable fusedopt._spec.StepPower(def0). The
// kernel sees only the number.

// The values a real hyper-parameter may take: [lo, hi], either end open. Unchecked when
// !checked (any real, NaN included).
struct Range {
  double lo, hi;
  bool lo_open, hi_open, checked;
};
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr Range kAnyReal{-kInf, kInf, false, false, false};
constexpr Range kNonNegative{0.0, kInf, false, false, true};
constexpr Range kFiniteNonNegative{0.0, kInf, false, true, true};
constexpr Range kUnitClosed{0.0, 1.0, false, false, true};
constexpr Range kUnitHalfOpen{0.0, 1.0, false, true, true};

template <class H>
struct HyperSpec {
  const char* name;
  HKind kind;
  double def0, def1;     // the default (a Flag: 0 or 1; a Pair: both)
  Range range;           // for each float of a Lr, Real or Pair
  const char* invalid;   // torch's text for a value out of range: "{}" is the value, "{i}" the
                         // index within a pair
  int order;             // torch's order of checks: the first failing one is the error raised
  double H::*real0;
  double H::*real1;      // a Pair's second float
  bool H::*flag;
  bool kw_only = false;   // keyword-only in the optimizer classes' constructors (after the *)
  bool in_call = true;    // taken by a call (false: only the classes use it, to start a state)
  bool fixed = false;     // set by the variant to def0, never taken (AdamW's decoupled decay)
  bool required = false;  // no default: a call must give it
  const char* what = nullptr;  // a Pair's elements, for messages: "(beta1, beta2)"
  // Not a constructor argument of the optimizer classes: they set it to the value of this one
  // (Lion's init_lr, the constructor's lr); calls take it like any other.
  const char* from_arg = nullptr;
  // A StepFn's first 1-based step: before it the callable is not called and the value is +inf
  // (ADOPT's first step only sets v; its reference calls clip_lambda from the second step on).
  int from_step = 1;
};

template <class H>
constexpr HyperSpec<H> keyword_only(HyperSpec<H> s) {
  s.kw_only = true;
  return s;
}
template <class H>
constexpr HyperSpec<H> classes_only(HyperSpec<H> s) {
  s.in_call = false;
  return s;
}
template <class H>
constexpr HyperSpec<H> set_from(HyperSpec<H> s, const char* arg) {
  s.from_arg = arg;
  return s;
}
template <class H>
constexpr HyperSpec<H> required(HyperSpec<H> s) {
  s.required = true;
  return s;
}

template <class H>
constexpr HyperSpec<H> lr_hyper(double def, double H::*f) {
  return {"lr", HKind::Lr, def, 0.0, kFiniteNonNegative, "Invalid learning rate: {}", 0, f, nullptr,
          nullptr};
}
template <class H>
constexpr HyperSpec<H> real_hyper(const char* name, double def, double H::*f, Range range,
                                  const char* invalid, int order) {
  return {name, HKind::Real, def, 0.0, range, invalid, order, f, nullptr, nullptr};
}
template <class H>
constexpr HyperSpec<H> step_fn_hyper(const char* name, double power, double H::*f, Range range,
                                     const char* invalid, int order, int from_step = 1) {
  HyperSpec<H> s{name, HKind::StepFn, power, 0.0, range, invalid, order, f, nullptr, nullptr};
  s.from_step = from_step;
  return s;
}
template <class H>
constexpr HyperSpec<H> flag_hyper(const char* name, bool def, bool H::*f, int order) {
  return {name, HKind::Flag, def ? 1.0 : 0.0, 0.0, kAnyReal, nullptr, order, nullptr, nullptr, f};
}
template <class H>
constexpr HyperSpec<H> betas_hyper(double beta1, double beta2, double H::*f1, double H::*f2,
                                   int order) {
  return {"betas", HKind::Pair, beta1, beta2, kUnitHalfOpen,
          "Invalid beta parameter at index {i}: {}", order, f1, f2, nullptr, false, true, false,
          false, "(beta1, beta2)"};
}

// torch's messages for the common ones.
constexpr const char* kInvalidEps = "Invalid epsilon value: {}";
constexpr const char* kInvalidWeightDecay = "Invalid weight_decay value: {}";

struct ScalarSpec {
  const char* name;
  double init;  // before the first step
};

constexpr double kNoRunInput = -1.0;  // a run without its input (Note [Passes])

// Per call: the step and the scalar state before it.
struct StepArgs {
  int64_t step;               // 1-based; 0 for an algorithm without steps
  const double* scalars_in;   // kScalars.size() values
  double grad_factor = 1.0;   // multiplies each grad as it is loaded (Note [The fused unscale])
  // A spec of several passes (Note [Passes]): which pass runs, and what its between() made of
  // the passes before it: kCallValues values for the call, kTensorValues per tensor of the call
  // (by its index in the call), in the memory the kernels run in.
  // The values live where the kernels run (device memory for the CUDA kernels): only the
  // algorithm objects read them, through for_tensor; dispatch reads run_input, on the host.
  int pass = 0;
  const double* call_values = nullptr;
  const double* tensor_values = nullptr;
  double run_input = kNoRunInput;  // call_values[0], as the host knows it
};

// Note [Passes]
// An update that needs sums over its tensors first (LAMB's trust ratio: the norms of each param
// and of its update) is one spec of several passes over the call's work lists, run by one bound
// call. Its dispatch gives, for StepArgs::pass, that pass's algorithm object: a reduction (whose
// sums per tensor go to a scratch array) or an update, which may read one value per tensor (an
// algorithm object with kPerTensor: the drivers take for_tensor(i) of it for the elements of the
// call's tensor i). Between two passes the host calls the spec's
//   between(h, t, pass, n, sums, call, tensor)
// which turns the sums of `pass` (n x its accumulators, in the order of Note [Deterministic
// reductions]; nullptr after an update or a skipped pass) into the values the later passes read:
// call[kCallValues], tensor[n x kTensorValues]. call[0] is the run's input (the spec's
// run_input: LAMB's global grad norm; kNoRunInput, a negative number no run may give, when the
// call computes it from its own grads). pass_sums(h, pass, input) says what a pass is for these
// hyper-parameters and that input: its number of sums (0: an update), or -1 when it is skipped.

constexpr bool same_name(const char* a, const char* b) {
  while (*a != '\0' && *a == *b) {
    ++a;
    ++b;
  }
  return *a == *b;
}

// A variant's hyper-parameter list: `base` with `name`'s default replaced.
template <class H, size_t N>
constexpr std::array<HyperSpec<H>, N> with_default(std::array<HyperSpec<H>, N> base,
                                                   const char* name, double def) {
  for (size_t i = 0; i < N; ++i) {
    if (same_name(base[i].name, name)) base[i].def0 = def;
  }
  return base;
}

// A variant's hyper-parameter list: `base` with `name` fixed to `value` (not taken by calls nor
// by the classes' constructors; the classes' param groups carry it).
template <class H, size_t N>
constexpr std::array<HyperSpec<H>, N> with_fixed(std::array<HyperSpec<H>, N> base,
                                                 const char* name, double value) {
  for (size_t i = 0; i < N; ++i) {
    if (same_name(base[i].name, name)) {
      base[i].def0 = value;
      base[i].fixed = true;
      base[i].in_call = false;
    }
  }
  return base;
}

// The base of a spec's optional parts: no scalar state, no cross-checks, nothing fixed.
struct SpecDefaults {
  static constexpr std::array<ScalarSpec, 0> kScalars{};
  static constexpr bool kHasStep = true;
  static constexpr int kReduce = 0;
  static constexpr int kPasses = 1;  // Note [Passes]
  static constexpr int kCallValues = 0;
  static constexpr int kTensorValues = 0;
  static constexpr const char* kRunInput = nullptr;  // the name of call_values[0] in a run
  template <class H>
  static int pass_sums(const H&, int, double) {
    return 0;
  }
  template <class H>
  FUSEDOPT_HOST_DEVICE static void between(const H&, int64_t, int, int64_t, const double*,
                                           double*, double*) {}
  template <class H>
  static constexpr const char* check(const H&) {
    return nullptr;
  }
  template <class H>
  static void advance(const H&, int64_t, const double*, double*) {}
  template <class H>
  static void initial(const H&, int64_t, double*) {}
};

}  // namespace fusedopt
