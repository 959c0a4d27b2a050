// The specs of algorithms/registry.h at run time, for the generic binders: names, buffer lists,
// hyper-parameters with their checks, scalar state, and the spec's own functions behind plain
// pointers. The one place where a spec's hyper-parameters are read from Python and checked.
#pragma once

#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "../spec.h"
#include "checks.h"

namespace fusedopt::bindings {

#pragma GCC visibility push(hidden)

// How hyper-parameters are checked: messages name `names.fn()`. A value out of range raises
// torch's bare text when `torch_text` (the optimizer classes: "Invalid learning rate: -1.0"), else
// "<fn>: <torch's text>"; a value of the wrong type is always "<fn>: <name> must be ...". With
// `allow_schedule`, the learning rate may be any callable (a schedule).
struct HyperCheck {
  const Names& names;
  bool torch_text = false;
  bool allow_schedule = false;
};

struct SpecInfo {
  const char* name;
  int index;   // in Specs
  int kernel;  // the index of the spec whose kernel runs (AdamW: Adam's)
  std::vector<BufferSpec> buffers;  // the public signature's order
  struct Hyper {
    const char* name;
    HKind kind;
    double def0, def1;
    Range range;
    const char* invalid;
    int order;
    bool kw_only, in_call, fixed, required;
    const char* what;
    const char* from_arg;
    int from_step;
  };
  std::vector<Hyper> hypers;      // the public signature's order
  std::vector<int> check_order;   // indices into hypers, torch's order
  std::vector<ScalarSpec> scalars;
  bool has_step;
  int reduce;
  // Note [Passes] in spec.h
  int passes, call_values, tensor_values;
  const char* run_input;  // the name of the run's input (call_values[0]), or nullptr
  int lr = -1;  // index of the learning rate in hypers, or -1
  size_t hyper_size;

  // Reads and checks the values (one per hyper, nullptr: the default) into the spec's Hyper at
  // `out`, and their numbers into `numbers` (a Flag as 0/1, a Pair's first float), which decide
  // the optional buffers (uses).
  void (*parse)(const SpecInfo&, PyObject* const* values, void* out, double* numbers,
                const HyperCheck&);
  void (*set_real)(void* h, int index, double x);  // the float of hypers[index] (Lr, Real, StepFn)
  void (*advance)(const void* h, int64_t step, const double* in, double* out);
  void (*initial)(const void* h, int64_t step, double* out);
  int (*pass_sums)(const void* h, int pass, double input);
  void (*between)(const void* h, int64_t step, int pass, int64_t n, const double* sums,
                  double* call, double* tensor);

  // Whether buffer b is used, given the hyper-parameters' numbers.
  bool uses(int b, const double* numbers) const;
  // "<list> are required when <condition>".
  std::string required(int b) const;
  int hyper_index(const char* name) const;
  // What each pass is (Note [Passes]) for these hyper-parameters (the Hyper at h) and the run's
  // input: its number of sums (0: an update, -1: skipped).
  std::vector<int> pass_plan(const void* h, double input) const;
};

const std::vector<SpecInfo>& specs();
// The spec named `name`, or a ValueError naming the known ones.
const SpecInfo& find_spec(const std::string& name);

// The specs as Python data (fusedopt._core.specs()).
py::list specs_data();

// A Python int >= 1 (numpy integers included) as a step, or the error naming it.
int64_t parse_step(const Names& names, py::handle v);
// A real number (not a bool) as a double, or TypeError "<fn>: <what> must be a real number".
double parse_real(const Names& names, const std::string& what, PyObject* v);
// The value of StepFn hyper-parameter `s` at the 1-based `step`: fn(step - 1.0), None as +inf,
// checked against its range (Note [Hyper-parameters of the step] in spec.h).
double step_fn_value(const Names& names, const SpecInfo::Hyper& s, PyObject* fn, int64_t step);

#pragma GCC visibility pop

}  // namespace fusedopt::bindings
