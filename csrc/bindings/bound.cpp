#include "bound.h"

#include <algorithm>

namespace fusedopt::bindings {

Bound::Busy::Busy(Bound& b) : b_(b) {
  bool expected = false;
  if (!b.busy_.compare_exchange_strong(expected, true)) {
    b.names_.value("this call is running in another thread; a bound call runs in one thread "
                   "at a time");
  }
}

void Bound::parse_hyper(py::handle hyper) {
  const auto& hs = spec_.hypers;
  size_t in_call = 0;
  for (const auto& h : hs) in_call += h.in_call ? 1 : 0;
  if (!PyTuple_Check(hyper.ptr()) || static_cast<size_t>(PyTuple_GET_SIZE(hyper.ptr())) != in_call) {
    throw py::type_error(names_.fn() + ": hyper must be a tuple of the " + std::to_string(in_call) +
                         " hyper-parameters of " + spec_.name + ", in the order of its signature");
  }
  std::vector<PyObject*> values(hs.size(), nullptr);
  size_t j = 0;
  for (size_t i = 0; i < hs.size(); ++i) {
    if (hs[i].in_call) values[i] = PyTuple_GET_ITEM(hyper.ptr(), j++);
  }
  hyper_.assign((spec_.hyper_size + sizeof(double) - 1) / sizeof(double) + 1, 0.0);
  numbers_.assign(hs.size() + 1, 0.0);
  spec_.parse(spec_, values.data(), hyper_.data(), numbers_.data(), HyperCheck{names_});
  step_fns_.clear();
  for (size_t i = 0; i < hs.size(); ++i) {
    if (hs[i].kind == HKind::StepFn && values[i] != nullptr && values[i] != Py_None &&
        PyCallable_Check(values[i])) {
      step_fns_.emplace_back(static_cast<int>(i), py::reinterpret_borrow<py::object>(values[i]));
    }
  }
}

std::vector<int> Bound::bind_lists(py::handle lists, py::handle aliases, bool grads_later) {
  const auto& bs = spec_.buffers;
  for (const BufferSpec& b : bs) {
    py::object alias = aliases.is_none() ? py::object(py::none())
                                         : py::reinterpret_borrow<py::dict>(aliases).attr("get")(b.list);
    aliases_.push_back(alias.is_none() ? std::string(b.list) : alias.cast<std::string>());
  }
  if (!PyTuple_Check(lists.ptr()) || static_cast<size_t>(PyTuple_GET_SIZE(lists.ptr())) != bs.size()) {
    throw py::type_error(names_.fn() + ": lists must be a tuple of the " +
                         std::to_string(bs.size()) + " lists of " + spec_.name +
                         ", in the order of its signature");
  }
  std::vector<int> sl = slots();
  for (int b : sl) {
    if (bs[b].when != When::Always && PyTuple_GET_ITEM(lists.ptr(), b) == Py_None) {
      names_.value(aliases_[b] + spec_.required(b).substr(std::string(bs[b].list).size()));
    }
    has_grad_slot_ = has_grad_slot_ || bs[b].role == Role::Grad;
  }
  grads_bound_ = has_grad_slot_ && !grads_later;
  return sl;
}

std::vector<Span> Bound::bound_grad_spans(const std::vector<Span>& read, int rank) {
  std::vector<Span> spans;
  spans.reserve(read.size());
  for (Span s : read) {
    s.rank = static_cast<uint16_t>(rank * 8 + s.rank % 8);
    spans.push_back(s);
  }
  return spans;
}

std::vector<int> Bound::slots() const {
  std::vector<int> out(2, -1);
  const auto& bs = spec_.buffers;
  for (size_t b = 0; b < bs.size(); ++b) {
    if (bs[b].role == Role::Param || bs[b].role == Role::Input) out[0] = static_cast<int>(b);
    if (bs[b].role == Role::Grad) out[1] = static_cast<int>(b);
  }
  for (size_t b = 0; b < bs.size(); ++b) {
    if (bs[b].role == Role::State && spec_.uses(static_cast<int>(b), numbers_.data())) {
      out.push_back(static_cast<int>(b));
    }
  }
  if (out[1] < 0) out.erase(out.begin() + 1);  // a reduction over one list has no slot 1
  return out;
}

int64_t Bound::run_args(py::handle step, py::handle lr, py::handle scalars, std::vector<double>& h,
                        std::vector<double>& in) const {
  int64_t t = 0;
  if (spec_.has_step) {
    if (step.is_none()) names_.type("step is required (the 1-based step of this update)");
    t = parse_step(names_, step);
  }
  h = hyper_;
  if (spec_.lr >= 0 && !lr.is_none()) {
    const auto& s = spec_.hypers[spec_.lr];
    const double x = parse_real(names_, "lr", lr.ptr());
    if (!(x >= s.range.lo && x < s.range.hi)) {
      names_.value(format_message(s.invalid, py::str(lr)));
    }
    spec_.set_real(h.data(), spec_.lr, x);
  }
  if (!step_fns_.empty()) {
    prepare_step(t);
    for (size_t k = 0; k < step_fns_.size(); ++k) {
      spec_.set_real(h.data(), step_fns_[k].first, prepared_[k]);
    }
  }
  const size_t ns = spec_.scalars.size();
  in.assign(ns, 0.0);
  if (ns == 0) return t;
  // several: a tuple of them, all given or all None (fusedopt.functional passes its arguments)
  size_t given = ns;
  if (ns > 1 && !scalars.is_none()) {
    if (!PyTuple_Check(scalars.ptr()) || static_cast<size_t>(PyTuple_GET_SIZE(scalars.ptr())) != ns) {
      names_.type("scalars must be a tuple of " + std::to_string(ns) + " floats, got " +
                  repr_of(scalars));
    }
    given = 0;
    for (size_t i = 0; i < ns; ++i) given += PyTuple_GET_ITEM(scalars.ptr(), i) != Py_None;
    if (given != 0 && given != ns) {
      std::string all;
      for (size_t i = 0; i < ns; ++i) all += (i ? " and " : "") + std::string(spec_.scalars[i].name);
      names_.value(all + " are given together (or none of them: a run from step 1)");
    }
  }
  if (scalars.is_none() || given == 0) {
    spec_.initial(h.data(), t, in.data());
  } else if (ns == 1) {
    in[0] = parse_real(names_, spec_.scalars[0].name, scalars.ptr());
  } else {
    for (size_t i = 0; i < ns; ++i) {
      in[i] = parse_real(names_, spec_.scalars[i].name, PyTuple_GET_ITEM(scalars.ptr(), i));
    }
  }
  return t;
}

double Bound::run_input(py::handle input) const {
  if (input.is_none()) return kNoRunInput;
  if (spec_.run_input == nullptr) {
    names_.type(std::string(spec_.name) + " takes no grad_norm");
  }
  const double x = parse_real(names_, spec_.run_input, input.ptr());
  if (x < 0.0) {  // (NaN is a value: the norm of grads that hold a NaN)
    names_.value(std::string(spec_.run_input) + " must be >= 0, got " + std::string(py::str(input)));
  }
  return x;
}

void Bound::prepare_step(int64_t t) const {
  if (prepared_step_ == t) return;
  std::vector<double> values;
  for (const auto& [index, fn] : step_fns_) {
    values.push_back(step_fn_value(names_, spec_.hypers[index], fn.ptr(), t));
  }
  prepared_ = std::move(values);
  prepared_step_ = t;
}

bool Bound::prepare(py::handle step) {
  if (step_fns_.empty()) return false;
  prepare_step(parse_step(names_, step));
  return true;
}

py::object Bound::scalars_result(const std::vector<double>& h, int64_t step,
                                 const std::vector<double>& in) const {
  const size_t ns = spec_.scalars.size();
  if (ns == 0) return py::none();
  std::vector<double> out(ns);
  spec_.advance(h.data(), step, in.data(), out.data());
  if (ns == 1) return py::float_(out[0]);
  py::tuple t(ns);
  for (size_t i = 0; i < ns; ++i) t[i] = out[i];
  return std::move(t);
}

Calls::Calls(py::list bounds) {
  for (py::handle h : bounds) {
    Bound& b = h.cast<Bound&>();
    const int call = static_cast<int>(bounds_.size());
    keep_.push_back(py::reinterpret_borrow<py::object>(h));
    bounds_.push_back(&b);
    for (Span s : b.written()) {
      s.rank = static_cast<uint16_t>(call * 8 + s.rank % 8);  // ties: the calls in order, then slots
      written_.push_back(s);
    }
  }
  check_no_overlap(written_);
}

void Calls::check(py::list grads) {
  if (grads.size() != bounds_.size()) {
    throw py::value_error("Calls.check: " + std::to_string(grads.size()) + " lists of grads for " +
                          std::to_string(bounds_.size()) + " calls");
  }
  std::vector<std::vector<Span>> spans;
  for (size_t c = 0; c < bounds_.size(); ++c) spans.push_back(bounds_[c]->grad_spans(grads[c], 0));
  for (size_t c = 0; c < bounds_.size(); ++c) {
    for (const Span& g : spans[c]) {
      if (const Span* w = overlapping(written_, g.lo, g.hi)) {
        g.names().value(g.item() + " overlaps " + w->item());
      }
    }
  }
}

void def_bound(py::module_& m) {
  py::class_<Bound>(m, "Bound", py::module_local(),
                    "A call checked and bound to its params and state (Note [A bound call], "
                    "csrc/bindings/bound.h); made by cpu.bind or cuda.bind.")
      .def_property_readonly("name", [](const Bound& b) { return b.names().fn(); })
      .def_property_readonly("algorithm", [](const Bound& b) { return b.spec().name; })
      .def("__len__", &Bound::size)
      .def("prepare", &Bound::prepare, py::arg("step"),
           "Calls the hyper-parameters given as callables of the step (ADOPT's clip_lambda) for "
           "the 1-based `step` and checks their values, for the runs of that step; returns "
           "whether there were any. Writes nothing (Note [Hyper-parameters of the step]).");
  py::class_<Calls>(m, "Calls", py::module_local(),
                    "The bound calls of one step, checked together: no two write the same memory, "
                    "and no grad of one overlaps a buffer another writes.")
      .def(py::init<py::list>(), py::arg("bounds"))
      .def("check", &Calls::check, py::arg("grads"),
           "Checks each call's grads (one list per call, as its check() does), then across the "
           "calls; writes nothing.");
}

}  // namespace fusedopt::bindings
