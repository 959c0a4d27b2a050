#include "specs.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "../algorithms/registry.h"

namespace fusedopt::bindings {

namespace {

// numbers.Real and numpy.bool_, looked up once (they live as long as the interpreter).
bool is_real_abc(PyObject* v) {
  static PyObject* real = [] {
    return py::object(py::module_::import("numbers").attr("Real")).release().ptr();
  }();
  const int r = PyObject_IsInstance(v, real);
  if (r < 0) throw py::error_already_set();
  return r == 1;
}

bool is_numpy_bool(PyObject* v) {
  static PyObject* np_bool = [] {
    return py::object(py::module_::import("numpy").attr("bool_")).release().ptr();
  }();
  const int r = PyObject_IsInstance(v, np_bool);
  if (r < 0) throw py::error_already_set();
  return r == 1;
}

bool in_range(const Range& r, double x) {
  if (!r.checked) return true;
  const bool lo = r.lo_open ? x > r.lo : x >= r.lo;
  const bool hi = r.hi_open ? x < r.hi : x <= r.hi;
  return lo && hi;  // false for NaN
}

[[noreturn]] void out_of_range(const HyperCheck& c, const std::string& msg) {
  if (c.torch_text) throw py::value_error(msg);
  c.names.value(msg);
}

double checked_real(const HyperCheck& c, const SpecInfo::Hyper& s, PyObject* v, int pair_index) {
  const std::string what =
      pair_index < 0 ? std::string(s.name) : std::string(s.name) + "[" + std::to_string(pair_index) + "]";
  const double x = parse_real(c.names, what, v);
  if (!in_range(s.range, x)) out_of_range(c, format_message(s.invalid, py::str(v), pair_index));
  return x;
}

bool checked_flag(const HyperCheck& c, const SpecInfo::Hyper& s, PyObject* v) {
  if (PyBool_Check(v)) return v == Py_True;
  if (is_numpy_bool(v)) return PyObject_IsTrue(v) == 1;
  c.names.type(std::string(s.name) + " must be a bool, got " + type_name(v));
}

template <class S>
void parse(const SpecInfo& info, PyObject* const* values, void* out, double* numbers,
           const HyperCheck& c) {
  using H = typename S::Hyper;
  H& h = *static_cast<H*>(out);
  for (int idx : info.check_order) {
    const auto& s = S::kHypers[idx];
    const SpecInfo::Hyper& si = info.hypers[idx];
    PyObject* v = s.fixed ? nullptr : values[idx];
    // a Real, or a Lr or StepFn given as a number: checked against the range
    const auto real_value = [&] {
      const double x = v ? checked_real(c, si, v, -1) : s.def0;
      h.*s.real0 = x;
      numbers[idx] = x;
    };
    switch (s.kind) {
      case HKind::Lr:
        if (v != nullptr && c.allow_schedule && PyCallable_Check(v)) {
          numbers[idx] = 0.0;  // a schedule, resolved by the classes at each step
        } else {
          real_value();
        }
        break;
      case HKind::StepFn:
        // None: no bound; a callable: called at each run (Note [Hyper-parameters of the step])
        if (v == Py_None) {
          h.*s.real0 = std::numeric_limits<double>::infinity();
          numbers[idx] = h.*s.real0;
        } else if (v != nullptr && PyCallable_Check(v)) {
          h.*s.real0 = std::numeric_limits<double>::quiet_NaN();
          numbers[idx] = 0.0;
        } else {
          real_value();
        }
        break;
      case HKind::Real:
        real_value();
        break;
      case HKind::Flag: {
        const bool b = v ? checked_flag(c, si, v) : s.def0 != 0.0;
        h.*s.flag = b;
        numbers[idx] = b ? 1.0 : 0.0;
        break;
      }
      case HKind::Pair: {
        double x0 = s.def0, x1 = s.def1;
        if (v) {
          const bool seq = PySequence_Check(v) && !PyUnicode_Check(v) && !PyBytes_Check(v);
          const Py_ssize_t n = seq ? PySequence_Size(v) : -1;
          if (n < 0) PyErr_Clear();
          if (n != 2) {
            c.names.value(std::string(s.name) + " must be a pair " + (s.what ? s.what : "") +
                          ", got " + repr_of(v));
          }
          py::object a = py::reinterpret_steal<py::object>(PySequence_GetItem(v, 0));
          py::object b = py::reinterpret_steal<py::object>(PySequence_GetItem(v, 1));
          if (!a || !b) throw py::error_already_set();
          x0 = checked_real(c, si, a.ptr(), 0);
          x1 = checked_real(c, si, b.ptr(), 1);
        }
        h.*s.real0 = x0;
        h.*s.real1 = x1;
        numbers[idx] = x0;
        break;
      }
    }
  }
  if (const char* msg = S::check(h)) out_of_range(c, msg);
}

template <class S>
SpecInfo make_info() {
  using H = typename S::Hyper;
  SpecInfo info{};
  info.name = S::kName;
  info.index = kSpecIndex<S>;
  info.kernel = kSpecIndex<typename S::Kernel>;
  info.buffers.assign(S::kBuffers.begin(), S::kBuffers.end());
  for (const auto& s : S::kHypers) {
    info.hypers.push_back({s.name, s.kind, s.def0, s.def1, s.range, s.invalid, s.order, s.kw_only,
                           s.in_call, s.fixed, s.required, s.what, s.from_arg, s.from_step});
    if (s.kind == HKind::Lr) info.lr = static_cast<int>(info.hypers.size()) - 1;
  }
  for (size_t i = 0; i < info.hypers.size(); ++i) info.check_order.push_back(static_cast<int>(i));
  std::stable_sort(info.check_order.begin(), info.check_order.end(),
                   [&](int a, int b) { return info.hypers[a].order < info.hypers[b].order; });
  info.scalars.assign(S::kScalars.begin(), S::kScalars.end());
  info.has_step = S::kHasStep;
  info.reduce = S::kReduce;
  info.passes = S::kPasses;
  info.call_values = S::kCallValues;
  info.tensor_values = S::kTensorValues;
  info.run_input = S::kRunInput;
  info.hyper_size = sizeof(H);
  info.parse = &parse<S>;
  info.set_real = [](void* h, int index, double x) {
    static_cast<H*>(h)->*S::kHypers[index].real0 = x;
  };
  info.advance = [](const void* h, int64_t step, const double* in, double* out) {
    S::advance(*static_cast<const H*>(h), step, in, out);
  };
  info.initial = [](const void* h, int64_t step, double* out) {
    S::initial(*static_cast<const H*>(h), step, out);
  };
  info.pass_sums = [](const void* h, int pass, double input) {
    return S::pass_sums(*static_cast<const H*>(h), pass, input);
  };
  info.between = [](const void* h, int64_t step, int pass, int64_t n, const double* sums,
                    double* call, double* tensor) {
    S::between(*static_cast<const H*>(h), step, pass, n, sums, call, tensor);
  };
  return info;
}

template <class... S>
std::vector<SpecInfo> make_all(TypeList<S...>) {
  return {make_info<S>()...};
}

const char* role_name(Role r) {
  switch (r) {
    case Role::Param: return "param";
    case Role::Input: return "input";
    case Role::Grad: return "grad";
    case Role::State: return "state";
  }
  return "?";
}

const char* when_name(When w) {
  switch (w) {
    case When::Always: return "always";
    case When::Flag: return "flag";
    case When::NonZero: return "nonzero";
    case When::Positive: return "positive";
  }
  return "?";
}

const char* kind_name(HKind k) {
  switch (k) {
    case HKind::Lr: return "lr";
    case HKind::Real: return "real";
    case HKind::Flag: return "flag";
    case HKind::Pair: return "pair";
    case HKind::StepFn: return "step_fn";
  }
  return "?";
}

py::object or_none(const char* s) { return s ? py::object(py::str(s)) : py::object(py::none()); }

}  // namespace

bool SpecInfo::uses(int b, const double* numbers) const {
  const BufferSpec& s = buffers[b];
  if (s.when == When::Always) return true;
  const double x = numbers[hyper_index(s.hyper)];
  switch (s.when) {
    case When::Flag: return x != 0.0;
    case When::NonZero: return x != 0.0;
    case When::Positive: return x > 0.0;
    case When::Always: return true;
  }
  return true;
}

std::string SpecInfo::required(int b) const {
  const BufferSpec& s = buffers[b];
  std::string cond;
  switch (s.when) {
    case When::Flag: cond = std::string(s.hyper) + "=True"; break;
    case When::NonZero: cond = std::string(s.hyper) + " != 0"; break;
    case When::Positive: cond = std::string(s.hyper) + " > 0"; break;
    case When::Always: return std::string(s.list) + " are required";
  }
  return std::string(s.list) + " are required when " + cond;
}

std::vector<int> SpecInfo::pass_plan(const void* h, double input) const {
  std::vector<int> plan;
  for (int pass = 0; pass < passes; ++pass) plan.push_back(pass_sums(h, pass, input));
  return plan;
}

int SpecInfo::hyper_index(const char* n) const {
  for (size_t i = 0; i < hypers.size(); ++i) {
    if (same_name(hypers[i].name, n)) return static_cast<int>(i);
  }
  return -1;
}

const std::vector<SpecInfo>& specs() {
  static const std::vector<SpecInfo> all = make_all(Specs{});
  return all;
}

const SpecInfo& find_spec(const std::string& name) {
  for (const SpecInfo& s : specs()) {
    if (name == s.name) return s;
  }
  std::string known;
  for (const SpecInfo& s : specs()) known += (known.empty() ? "" : ", ") + std::string(s.name);
  throw py::value_error("fusedopt: no algorithm named '" + name + "' (known: " + known + ")");
}

int64_t parse_step(const Names& names, py::handle v) {
  PyObject* o = v.ptr();
  long long t = 0;
  if (PyLong_Check(o) && !PyBool_Check(o)) {
    int overflow = 0;
    t = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow != 0) names.value("step must be >= 1 and < 2**63, got " + repr_of(v));
  } else if (PyIndex_Check(o) && !PyBool_Check(o) && !is_numpy_bool(o)) {
    t = py::reinterpret_steal<py::object>(PyNumber_Index(o)).cast<long long>();
  } else {
    names.type("step must be an int, got " + type_name(o));
  }
  if (t < 1) names.value("step must be >= 1, got " + std::to_string(t));
  return t;
}

double step_fn_value(const Names& names, const SpecInfo::Hyper& s, PyObject* fn, int64_t step) {
  if (step < s.from_step) return std::numeric_limits<double>::infinity();  // not used yet
  py::float_ n(static_cast<double>(step - 1));
  py::object r = py::reinterpret_steal<py::object>(PyObject_CallOneArg(fn, n.ptr()));
  if (!r) throw py::error_already_set();
  if (r.is_none()) return std::numeric_limits<double>::infinity();
  // a float in range, the usual answer, needs no name; anything else is named "clip_lambda(2.0)"
  const bool plain = PyFloat_Check(r.ptr());
  const double x = plain ? PyFloat_AS_DOUBLE(r.ptr()) : -1.0;
  if (plain && in_range(s.range, x)) return x;
  const std::string what = std::string(s.name) + "(" + std::string(py::str(n)) + ")";
  const double y = plain ? x : parse_real(names, what, r.ptr());
  if (!in_range(s.range, y)) {
    names.value(format_message(s.invalid, py::str(r), -1) + " (returned by " + what + ")");
  }
  return y;
}

double parse_real(const Names& names, const std::string& what, PyObject* v) {
  if (PyFloat_Check(v)) return PyFloat_AS_DOUBLE(v);
  if (PyLong_Check(v) && !PyBool_Check(v)) {
    const double x = PyLong_AsDouble(v);
    if (x == -1.0 && PyErr_Occurred()) {
      PyErr_Clear();
      names.value(what + " is " + repr_of(v) + ", too large for a float");
    }
    return x;
  }
  if (!PyBool_Check(v) && !is_numpy_bool(v) && is_real_abc(v)) {
    const double x = PyFloat_AsDouble(v);
    if (x == -1.0 && PyErr_Occurred()) throw py::error_already_set();
    return x;
  }
  names.type(what + " must be a real number, got " + type_name(v));
}

py::list specs_data() {
  py::list out;
  for (const SpecInfo& s : specs()) {
    py::dict d;
    d["name"] = s.name;
    d["kernel"] = specs()[s.kernel].name;
    py::list buffers;
    for (const BufferSpec& b : s.buffers) {
      py::dict bd;
      bd["list"] = b.list;
      bd["state"] = or_none(b.state);
      bd["role"] = role_name(b.role);
      bd["hyper"] = or_none(b.hyper);
      bd["when"] = when_name(b.when);
      bd["init"] = or_none(b.init);
      buffers.append(bd);
    }
    d["buffers"] = buffers;
    py::list hypers;
    for (const SpecInfo::Hyper& h : s.hypers) {
      py::dict hd;
      hd["name"] = h.name;
      hd["kind"] = kind_name(h.kind);
      if (h.kind == HKind::Flag) {
        hd["default"] = py::bool_(h.def0 != 0.0);
      } else if (h.kind == HKind::Pair) {
        hd["default"] = py::make_tuple(h.def0, h.def1);
      } else {
        hd["default"] = h.def0;
      }
      if (h.range.checked) {
        hd["range"] = py::make_tuple(h.range.lo, h.range.hi, h.range.lo_open, h.range.hi_open);
      } else {
        hd["range"] = py::none();
      }
      hd["invalid"] = or_none(h.invalid);
      hd["order"] = h.order;
      hd["kw_only"] = h.kw_only;
      hd["in_call"] = h.in_call;
      hd["fixed"] = h.fixed;
      hd["required"] = h.required;
      hd["from_arg"] = or_none(h.from_arg);
      hypers.append(hd);
    }
    d["hypers"] = hypers;
    py::list scalars;
    for (const ScalarSpec& sc : s.scalars) scalars.append(py::make_tuple(sc.name, sc.init));
    d["scalars"] = scalars;
    d["step"] = s.has_step;
    d["reduce"] = s.reduce;
    d["passes"] = s.passes;
    d["run_input"] = or_none(s.run_input);
    out.append(d);
  }
  return out;
}

}  // namespace fusedopt::bindings
