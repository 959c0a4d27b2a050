// fusedopt._core.cpu: the generic binder for NumPy arrays (Note [A bound call], bound.h). One
// class serves every algorithm of the registry; the spec says which lists a call takes, in which
// slots, and how its hyper-parameters are read.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "../cuda/emulate.h"
#include "arrays.h"
#include "bound.h"

namespace fusedopt::bindings {

#pragma GCC visibility push(hidden)

namespace {

using npy = py::detail::npy_api;

class CpuBound : public Bound {
 public:
  CpuBound(const SpecInfo& spec, py::handle lists, py::handle hyper, std::string name,
           py::handle index, bool grads_later, py::handle aliases, bool keep = true,
           py::handle grad_dtype = py::none(), py::handle copies = py::none(),
           py::handle sr_seed = py::none(), py::handle kahan = py::none());
  void check(py::handle grads) {
    Busy busy(*this);
    verify_unchanged();
    checked_grads(grads, nullptr, 0);
  }
  void verify() {
    Busy busy(*this);
    verify_unchanged();
  }
  // The drivers a run can go through: the CPU's, or the CUDA driver emulated on the host.
  enum class Driver { Cpu, EmulatedCuda };
  py::object run(py::handle grads, py::handle step, py::handle lr, py::handle scalars,
                 Driver driver = Driver::Cpu, py::handle grad_scale = py::none(),
                 py::handle input = py::none());
  // A run whose grads are given as the addresses of their data (Note [Grads by address]).
  py::object run_addresses(py::handle addresses, py::handle step, py::handle lr,
                           py::handle scalars, py::handle others, bool run,
                           py::handle grad_scale, py::handle input);
  // Note [The pass hook]
  // A spec of several passes (Note [Passes]) can have its sums read and replaced between passes:
  // a callable set here is called, with the GIL, after each pass that sums, as
  // hook(pass, sums), sums an n x k float64 array over the scratch (row i: the call's tensor i;
  // valid only during the call), before the host's between() reads it. fusedopt.torch's
  // ZeroRedundancyOptimizer adds there the sums of the other ranks' slices of each tensor, so
  // that LAMB's per-tensor norms are those of whole tensors. An exception from the hook ends the
  // run where it is raised (a later pass may not have run: the hook must not fail).
  py::object pass_hook_ = py::none();

  std::vector<Span> grad_spans(py::handle grads, int rank) override {
    Busy busy(*this);
    verify_unchanged();
    // the grads given to bind, checked then
    if (grads.is_none() && grads_bound_) return bound_grad_spans(call_.read, rank);
    std::vector<Span> spans;
    checked_grads(grads, &spans, rank);
    return spans;
  }

 private:
  std::vector<ListArg> args_;      // slot order (Note [Kernel slots]); each list a held tuple
  std::vector<int> later_types_;   // the grads' announced type numbers, one per tensor
  bool stochastic_ = false;        // Note [Stochastic rounding]: 16-bit stores, with seed_
  uint64_t seed_ = 0;
  std::vector<py::object> held_;   // per slot: the tuple of its arrays (None: grads not bound)
  CheckedCall call_;
  bool keep_ = true;

  void check_all();
  void verify_unchanged();
  py::object launch(int64_t t, std::vector<double>& h, std::vector<double>& in, Driver driver,
                    double grad_factor = 1.0, double input = kNoRunInput);
  // The factor of Note [The fused unscale] for the scale `grad_scale` (None: 1).
  double grad_factor(py::handle grad_scale) const;
  py::tuple checked_grads(py::handle grads, std::vector<Span>* spans, int rank);
};

CpuBound::CpuBound(const SpecInfo& spec, py::handle lists, py::handle hyper, std::string name,
                   py::handle index, bool grads_later, py::handle aliases, bool keep,
                   py::handle grad_dtype, py::handle copies, py::handle sr_seed,
                   py::handle kahan)
    : Bound(spec, name.empty() ? std::string(spec.name) : std::move(name), index), keep_(keep) {
  parse_hyper(hyper);
  const auto& bs = spec.buffers;
  const std::vector<int> sl = bind_lists(lists, aliases, grads_later);
  for (size_t k = 0; k < sl.size(); ++k) {
    const BufferSpec& b = bs[sl[k]];
    const bool later = b.role == Role::Grad && grads_later;
    args_.push_back({aliases_[sl[k]].c_str(), PyTuple_GET_ITEM(lists.ptr(), sl[k]), b.role, !later});
  }
  if (!grad_dtype.is_none()) {
    if (!grads_later || !has_grad_slot_) {
      names_.type("grad_dtype is for a call whose grads come later (grads_later=True)");
    }
    if (PyList_Check(grad_dtype.ptr()) || PyTuple_Check(grad_dtype.ptr())) {  // one per tensor
      const py::sequence seq = py::reinterpret_borrow<py::sequence>(grad_dtype);
      py::handle params = args_[0].list;
      if (!PyList_Check(params.ptr()) && !PyTuple_Check(params.ptr())) {
        names_.type(std::string(args_[0].name) + " must be a list or tuple of numpy arrays, got " +
                    type_name(params));
      }
      const size_t n = static_cast<size_t>(PySequence_Fast_GET_SIZE(params.ptr()));
      if (seq.size() != n) {
        names_.value("grad_dtype has " + std::to_string(seq.size()) + " dtypes, expected " +
                     std::to_string(n) + " (one per param)");
      }
      for (size_t i = 0; i < n; ++i) {
        later_types_.push_back(type_num_of(names_, "grad_dtype", seq[i]));
      }
      args_[1].later_types = later_types_.data();
    } else {
      args_[1].later_type = type_num_of(names_, "grad_dtype", grad_dtype);
    }
  }
  if (!sr_seed.is_none()) {  // Note [Stochastic rounding]
    if (!spec_.has_step) {  // its draws would repeat at every call: a bias, not rounding
      names_.type(std::string(spec_.name) + " takes no sr_seed: it has no step to key the "
                  "draws by");
    }
    stochastic_ = sr_seed_of(names_, sr_seed, &seed_);
  }
  if (!copies.is_none()) {  // Note [Param copies]: after the slots
    if (!has_grad_slot_ || spec_.reduce > 0) {
      names_.type(std::string(spec_.name) + " takes no param_copies (they are of an update's "
                  "params)");
    }
    ListArg c{"param_copies", copies, Role::State};
    c.copy = true;
    args_.push_back(c);
  }
  if (!kahan.is_none()) {  // Note [Kahan summation] (storage.h): after the slots, as copies
    if (!has_grad_slot_ || spec_.reduce > 0) {
      names_.type(std::string(spec_.name) + " takes no kahan_comps (they are of an update's "
                  "params)");
    }
    check_kahan_alone(names_, !copies.is_none(), stochastic_);
    ListArg c{"kahan_comps", kahan, Role::State};
    c.copy = true;
    c.kahan = true;
    args_.push_back(c);
  }
  for (size_t k = 0; k < args_.size(); ++k) sites_[k] = {&names_, args_[k].name};  // + copies
  call_ = check_call(names_, args_.data(), static_cast<int>(args_.size()), sites_, 0, keep);
  if (!keep) return;  // run at once, by the caller that holds the lists (call())
  for (ListArg& a : args_) {
    if (!a.present) {
      held_.push_back(py::none());
      continue;
    }
    PyObject* t = PySequence_Tuple(a.list.ptr());
    if (t == nullptr) throw py::error_already_set();
    held_.push_back(py::reinterpret_steal<py::object>(t));
    a.list = held_.back();
  }
  written_ = call_.written;
  n_ = call_.n;
}

void CpuBound::check_all() {
  call_ = check_call(names_, args_.data(), static_cast<int>(args_.size()), sites_);
  written_ = call_.written;
}

void CpuBound::verify_unchanged() {
  size_t s = 0;
  bool flags = false;
  for (const ListArg& a : args_) {
    if (!a.present) continue;
    PyObject** items = PySequence_Fast_ITEMS(a.list.ptr());
    for (size_t i = 0; i < call_.n; ++i, ++s) {
      if (a.copy && items[i] == Py_None) continue;  // a param without a copy
      const auto* arr = py::detail::array_proxy(items[i]);
      const auto* d = py::detail::array_descriptor_proxy(arr->descr);
      const Seen& seen = call_.seen[s];
      const int64_t* dims = call_.dims.data() + seen.dims_at;
      bool same_shape = arr->nd == seen.nd;
      for (int q = 0; same_shape && q < arr->nd; ++q) same_shape = arr->dimensions[q] == dims[q];
      if (d->type_num != seen.type_num || d->byteorder != seen.byteorder) {
        const char* was = type_name_of(seen.type_num);
        names_.type(names_.item(a.name, i) + " was changed in place: dtype " + was + " -> " +
                    dtype_str(items[i]) + "; the arrays of a call must keep their dtype and shape");
      }
      if (!same_shape) {
        names_.value(names_.item(a.name, i) + " was changed in place: shape " +
                     shape_str(dims, seen.nd) + " -> " + shape_str(arr->dimensions, arr->nd) +
                     "; the arrays of a call must keep their dtype and shape");
      }
      // Its memory moved (resized to its own size) or its flags changed: the full check
      // refuses it by name, or takes the arrays as they are now.
      flags = flags || arr->data != seen.data;
      flags = flags || arr->flags != seen.flags;
    }
  }
  // Flags changed (made read-only, say): the full check words it, or lets the arrays through.
  if (flags) check_all();
}

py::tuple CpuBound::checked_grads(py::handle grads, std::vector<Span>* spans, int rank) {
  const ListArg& pa = args_[0];
  const char* gname = args_[1].name;
  if (!PyList_Check(grads.ptr()) && !PyTuple_Check(grads.ptr())) {
    names_.type(std::string(gname) + " must be a list or tuple of numpy arrays, got " +
                type_name(grads));
  }
  const size_t n = static_cast<size_t>(PySequence_Fast_GET_SIZE(grads.ptr()));
  if (n != call_.n) {
    names_.value(std::string(gname) + " has " + std::to_string(n) + " arrays, expected " +
                 std::to_string(call_.n) + " (one per param)");
  }
  PyObject* t = PySequence_Tuple(grads.ptr());
  if (t == nullptr) throw py::error_already_set();
  py::tuple g = py::reinterpret_steal<py::tuple>(t);
  const ListArg ga{gname, g, Role::Grad};
  PyObject** params = PySequence_Fast_ITEMS(pa.list.ptr());
  int last_w = -1, last_gt = -1;  // a work list and grad type already found to match
  for (size_t i = 0; i < n; ++i) {
    const auto* arr = check_grad(names_, ga, i, PyTuple_GET_ITEM(g.ptr(), i), params[i], pa.name);
    const auto [w, pos] = call_.at[i];
    if (w < 0) continue;  // an empty tensor
    const WorkList& wl = call_.lists[w];
    const int gt = py::detail::array_descriptor_proxy(arr->descr)->type_num;
    // A grad dtype the storage combinations allow, but of another combination than the one the
    // call was bound for (possible once a param type has several grad types).
    if (w != last_w || gt != last_gt) {  // a work list's combination fixes the param type
      const int pt =
          py::detail::array_descriptor_proxy(py::detail::array_proxy(params[i])->descr)->type_num;
      const int c = combo_of(pt, gt, 0);
      if (c < 0 || kCombos.at[c].grad != kCombos.at[wl.combo].grad) {
        names_.type(names_.item(gname, i) + " has dtype " + dtype_str(PyTuple_GET_ITEM(g.ptr(), i)) +
                    ", but the call was bound for " + dtype_name(kCombos.at[wl.combo].grad) + " grads");
      }
      last_w = w;
      last_gt = gt;
    }
    const auto [lo, hi] = extent(arr->data, wl.tensors[pos].numel, gt);
    // Calls::check (spans wanted) checks every grad against every call's written memory, this
    // call's included; a run checks against this call's.
    if (const Span* o = spans ? nullptr : overlapping(written_, lo, hi)) {
      names_.value(names_.item(gname, i) + " overlaps " + o->item());
    }
    if (spans) {
      spans->push_back({lo, hi, &sites_[1], static_cast<uint32_t>(i),
                        static_cast<uint16_t>(rank * 8 + 1), false});
    }
  }
  return g;
}

double CpuBound::grad_factor(py::handle grad_scale) const {
  if (grad_scale.is_none()) return 1.0;
  // The optimizers: an average (ewa) reads values, not grads.
  if (!has_grad_slot_ || !spec_.has_step) {
    names_.type(std::string(spec_.name) + " takes no grads to unscale");
  }
  const double s = parse_real(names_, "grad_scale", grad_scale.ptr());
  if (!(s > 0.0 && std::isfinite(s))) {
    names_.value("grad_scale must be a finite number > 0, got " + std::string(py::str(grad_scale)));
  }
  return static_cast<double>(static_cast<float>(1.0 / s));  // as GradScaler.unscale_
}

py::object CpuBound::run(py::handle grads, py::handle step, py::handle lr, py::handle scalars,
                         Driver driver, py::handle grad_scale, py::handle input) {
  Busy busy(*this);
  std::vector<double> h, in;
  const int64_t t = run_args(step, lr, scalars, h, in);
  const double factor = grad_factor(grad_scale);
  const double given = run_input(input);
  if (factor != 1.0 && driver != Driver::Cpu) names_.value("the emulated CUDA driver takes no grad_scale");
  if (keep_) verify_unchanged();
  py::tuple g;  // holds the grads while the kernels read them
  if (!grads.is_none()) {
    if (!has_grad_slot_) names_.type(std::string(spec_.name) + " takes no grads");
    g = checked_grads(grads, nullptr, 0);
    PyObject** items = PySequence_Fast_ITEMS(g.ptr());
    for (size_t i = 0; i < call_.n; ++i) {
      const auto [w, pos] = call_.at[i];
      if (w >= 0) call_.lists[w].tensors[pos].ptr[1] = py::detail::array_proxy(items[i])->data;
    }
  } else if (has_grad_slot_ && !grads_bound_) {
    names_.type(std::string(args_[1].name) + " must be a list or tuple of numpy arrays, got NoneType");
  }
  return launch(t, h, in, driver, factor, given);
}

// Note [Grads by address]
// fusedopt.torch hands a step's grads to a bound call as the addresses of their data: reading a
// torch tensor's data pointer costs a tenth of making a NumPy array of it, and its shape, dtype
// and device are those of its param by torch's own rule (the setter of Tensor.grad and autograd
// enforce them). The caller checks what torch does not ensure (a dense, contiguous grad); here
// each address is checked for its alignment and against the call's written memory, and the grad
// is taken to have its param's dtype and element count (the call must have been bound for grads
// of its params' dtypes).
py::object CpuBound::run_addresses(py::handle addresses, py::handle step, py::handle lr,
                                   py::handle scalars, py::handle others, bool run,
                                   py::handle grad_scale, py::handle input) {
  Busy busy(*this);
  const double factor = grad_factor(grad_scale);
  const double given = run_input(input);
  std::vector<const Bound*> more;  // the other calls of the step, whose written memory too
  for (py::handle o : others) more.push_back(o.cast<const Bound*>());
  std::vector<double> h, in;
  const int64_t t = run_args(step, lr, scalars, h, in);
  verify_unchanged();
  const char* gname = args_[1].name;
  if (!has_grad_slot_) names_.type(std::string(spec_.name) + " takes no grads");
  if (!PyList_Check(addresses.ptr()) && !PyTuple_Check(addresses.ptr())) {
    names_.type(std::string(gname) + " addresses must be a list or tuple of ints, got " +
                type_name(addresses));
  }
  const size_t n = static_cast<size_t>(PySequence_Fast_GET_SIZE(addresses.ptr()));
  if (n != call_.n) {
    names_.value(std::string(gname) + " has " + std::to_string(n) + " addresses, expected " +
                 std::to_string(call_.n) + " (one per param)");
  }
  PyObject** items = PySequence_Fast_ITEMS(addresses.ptr());
  PyObject** params = PySequence_Fast_ITEMS(args_[0].list.ptr());
  std::vector<std::pair<TensorRef*, void*>> set;
  set.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const auto [w, pos] = call_.at[i];
    if (w < 0) continue;  // an empty tensor
    WorkList& wl = call_.lists[w];
    const Combo& c = kCombos.at[wl.combo];
    if (c.grad != c.param) {
      names_.type(names_.item(gname, i) + ": a call bound for grads of another dtype than its "
                  "params' takes no grad addresses");
    }
    if (!PyLong_Check(items[i])) {
      names_.type(names_.item(gname, i) + " address is a " + type_name(items[i]) +
                  ", expected an int");
    }
    void* ptr = PyLong_AsVoidPtr(items[i]);
    if (ptr == nullptr && PyErr_Occurred()) throw py::error_already_set();
    const int pt =
        py::detail::array_descriptor_proxy(py::detail::array_proxy(params[i])->descr)->type_num;
    const auto [lo, hi] = extent(static_cast<const char*>(ptr), wl.tensors[pos].numel, pt);
    if (ptr == nullptr || lo % static_cast<uintptr_t>(dtype_size(c.param)) != 0) {
      names_.value(names_.item(gname, i) + " is not aligned (address " + std::to_string(lo) + ")");
    }
    if (const Span* o = overlapping(written_, lo, hi)) {
      names_.value(names_.item(gname, i) + " overlaps " + o->item());
    }
    for (const Bound* b : more) {
      if (const Span* o = overlapping(b->written(), lo, hi)) {
        names_.value(names_.item(gname, i) + " overlaps " + o->item());
      }
    }
    set.emplace_back(&wl.tensors[pos], ptr);
  }
  if (!run) return py::none();
  for (auto& [ref, ptr] : set) ref->ptr[1] = ptr;
  return launch(t, h, in, Driver::Cpu, factor, given);
}

py::object CpuBound::launch(int64_t t, std::vector<double>& h, std::vector<double>& in,
                            Driver driver, double grad_factor, double input) {
  const int K = spec_.reduce;
  py::array_t<double> out;
  double* out_ptr = nullptr;
  if (K > 0) {
    out = py::array_t<double>(std::vector<py::ssize_t>{static_cast<py::ssize_t>(call_.n), K});
    out_ptr = out.mutable_data();
    std::fill(out_ptr, out_ptr + call_.n * K, 0.0);
  }
  if (driver != Driver::Cpu) {
    for (const WorkList& wl : call_.lists) {
      if (wl.combo >= kNumCompiledCombos || wl.copy >= 0 || wl.kahan) {
        names_.type("the emulated CUDA driver runs float32 and float64 only (Note [Staged storage])");
      }
    }
  }
  const int threads = thread_setting();
  auto run_pass = [&](const StepArgs& step_args, double* sums) {
    if (driver == Driver::Cpu) {
      const cpu::Launch launch{h.data(), step_args, sums};
      const cpu::KernelFn kernel = cpu::active().kernels[spec_.kernel];
      for (const WorkList& wl : call_.lists) {
        cpu::WorkView v = wl.view(threads);
        v.stochastic = stochastic_;
        v.sr_key = stochastic_ ? sr_run_key(seed_, t) : 0;
        kernel(v, launch);
      }
    } else {
      const cuda::Launch launch{h.data(), step_args, sums};
      const cuda::KernelFn kernel = cuda::emulated_kernels()[spec_.kernel];
      for (const WorkList& wl : call_.lists) {
        kernel({wl.tensors.data(), wl.origin.data(), static_cast<int64_t>(wl.tensors.size()),
                wl.combo, 0, 0},
               launch);
      }
    }
  };
  if (spec_.passes == 1) {
    py::gil_scoped_release nogil;
    run_pass(StepArgs{t, in.data(), grad_factor}, out_ptr);
  } else {
    // Each pass over every work list, then the host's part between passes (Note [Passes]).
    const int64_t n = static_cast<int64_t>(call_.n);
    const std::vector<int> plan = spec_.pass_plan(h.data(), input);
    std::vector<double> call(static_cast<size_t>(spec_.call_values), 0.0);
    std::vector<double> tensor(static_cast<size_t>(n * spec_.tensor_values), 0.0);
    const int most = std::max(0, *std::max_element(plan.begin(), plan.end()));
    std::vector<double> sums(static_cast<size_t>(n * most));
    call[0] = input;
    py::gil_scoped_release nogil;
    for (int pass = 0; pass < spec_.passes; ++pass) {
      const int k = plan[static_cast<size_t>(pass)];
      std::fill(sums.begin(), sums.end(), 0.0);
      if (k >= 0) {
        StepArgs a{t, in.data(), grad_factor, pass, call.data(), tensor.data(), input};
        run_pass(a, k > 0 ? sums.data() : nullptr);
      }
      if (k > 0 && !pass_hook_.is_none()) {  // Note [The pass hook]
        py::gil_scoped_acquire gil;
        py::array_t<double> view({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(k)},
                                 sums.data(), py::capsule(sums.data(), [](void*) {}));
        pass_hook_(pass, view);
      }
      if (pass + 1 < spec_.passes) {
        spec_.between(h.data(), t, pass, n, k > 0 ? sums.data() : nullptr, call.data(),
                      tensor.data());
      }
    }
  }
  if (K == 1) return out.attr("reshape")(call_.n);
  if (K > 1) return std::move(out);
  return scalars_result(h, t, in);
}

// The plan of a call (Note [The emulated CUDA driver]): every launch of tensors of `numels`, as
// the real launcher cuts them, with what each block covers (block_span).
template <class Args>
py::list plan_of(const std::vector<int64_t>& numels) {
  std::vector<TensorRef> tensors(numels.size());
  std::vector<int64_t> origin(numels.size());
  for (size_t i = 0; i < numels.size(); ++i) {
    tensors[i] = TensorRef{};
    tensors[i].numel = numels[i];
    origin[i] = static_cast<int64_t>(i);
  }
  const cuda::DeviceList l{tensors.data(), origin.data(), static_cast<int64_t>(tensors.size()), 0,
                           0, 0};
  py::list launches;
  cuda::for_each_launch<Args>(l, [&](const Args& args, int nblocks) {
    py::list blocks;
    int ntensors = 0;
    for (int b = 0; b < nblocks; ++b) {
      const auto span = cuda::block_span(args, b);
      ntensors = std::max(ntensors, span.t + 1);
      int64_t row = -1;
      if constexpr (Args::kReduce) row = args.origin[span.t];
      blocks.append(py::make_tuple(span.t, args.block_chunk[b], span.begin, span.len, row));
    }
    int64_t first = -1;
    if constexpr (Args::kReduce) first = args.first_chunk;
    py::dict d;
    d["blocks"] = blocks;
    d["numel"] = std::vector<int64_t>(args.numel, args.numel + ntensors);
    d["first_chunk"] = first;
    d["max_tensors"] = Args::kMaxTensors;
    d["param_bytes"] = sizeof(Args);
    launches.append(d);
  });
  return launches;
}

}  // namespace

void def_cpu(py::module_& cpu) {
  py::class_<CpuBound, Bound>(cpu, "Bound", py::module_local(),
                              "A call over NumPy arrays, checked and bound to its params and state "
                              "(Note [A bound call], csrc/bindings/bound.h).")
      .def("check", &CpuBound::check, py::arg("grads"),
           "Checks grads against the bound params, as run does; writes nothing.")
      .def("verify", &CpuBound::verify,
           "Checks that the arrays it holds are as they were checked (an array changed in place "
           "is refused by name); writes nothing.")
      .def("run",
           [](CpuBound& b, py::handle grads, py::handle step, py::handle lr, py::handle scalars,
              py::handle grad_scale, py::handle grad_norm) {
             return b.run(grads, step, lr, scalars, CpuBound::Driver::Cpu, grad_scale, grad_norm);
           },
           py::arg("grads") = py::none(), py::kw_only(),
           py::arg("step") = py::none(), py::arg("lr") = py::none(),
           py::arg("scalars") = py::none(), py::arg("grad_scale") = py::none(),
           py::arg("grad_norm") = py::none(),
           "Checks grads (None: those given to bind) and updates: the scalar state after the step "
           "(a float for one), a reduction's sums, or None. With grad_scale s, the grads are taken "
           "as scaled by s and unscaled as they are loaded (Note [The fused unscale]). "
           "grad_norm: LAMB's global grad norm over every call of the step (None: this call's "
           "grads'; Note [Passes]).")
      .def_readwrite("pass_hook", &CpuBound::pass_hook_,
                     "None, or hook(pass, sums) called between the passes of a spec of several "
                     "(Note [The pass hook])")
      .def("run_addresses", &CpuBound::run_addresses, py::arg("addresses"), py::kw_only(),
           py::arg("step") = py::none(), py::arg("lr") = py::none(),
           py::arg("scalars") = py::none(), py::arg("others") = py::tuple(),
           py::arg("run") = true, py::arg("grad_scale") = py::none(),
           py::arg("grad_norm") = py::none(),
           "As run, the grads given as the addresses of their data, each of its param's dtype "
           "and element count, contiguous (Note [Grads by address]); returns what run returns. "
           "Each grad is also checked against the written memory of the bound calls `others` "
           "(the other calls of a step); with run=False it is only checked.");
  cpu.def(
      "bind",
      [](const std::string& algo, py::handle lists, py::handle hyper, std::string name,
         py::handle index, bool grads_later, py::handle aliases, py::handle grad_dtype,
         py::handle param_copies, py::handle sr_seed, py::handle kahan_comps) {
        return std::make_unique<CpuBound>(find_spec(algo), lists, hyper, std::move(name), index,
                                          grads_later, aliases, true, grad_dtype, param_copies,
                                          sr_seed, kahan_comps);
      },
      py::arg("algo"), py::arg("lists"), py::arg("hyper"), py::kw_only(), py::arg("name") = "",
      py::arg("index") = py::none(), py::arg("grads_later") = false,
      py::arg("aliases") = py::none(), py::arg("grad_dtype") = py::none(),
      py::arg("param_copies") = py::none(), py::arg("sr_seed") = py::none(),
      py::arg("kahan_comps") = py::none(),
      "Checks a call of `algo` over NumPy arrays and binds it (Note [A bound call]): `lists` are "
      "its lists in the order of its signature (None for an unused optional one; for the grads "
      "too with grads_later), `hyper` its hyper-parameters that a call takes, in that order. "
      "Messages name `name` (default: algo) and index i as `index` says (None: i; an int: i + "
      "index; a sequence: index[i]) and each list by its name or its entry in `aliases` (a dict). "
      "With grads_later, `grad_dtype` is the dtype the grads will have (None: their params'). "
      "`param_copies`: a list of 16-bit arrays (or None entries), one per float32 param, each "
      "written with its param's new value rounded to its dtype (Note [Param copies]). "
      "`sr_seed`: None (16-bit stores round to nearest) or an int: they round stochastically, "
      "keyed by (sr_seed, step, tensor, element) (Note [Stochastic rounding]). "
      "`kahan_comps`: a list of arrays (or None entries), one per 16-bit param, of its dtype: "
      "the param's Kahan compensation, read and written (Note [Kahan summation]).");

  cpu.def(
      "call",
      [](const std::string& algo, py::handle lists, py::handle hyper, py::handle step,
         py::handle scalars, std::string name, py::handle grad_norm, py::handle param_copies,
         py::handle sr_seed, py::handle kahan_comps) {
        CpuBound b(find_spec(algo), lists, hyper, std::move(name), py::none(), false, py::none(),
                   false, py::none(), param_copies, sr_seed, kahan_comps);
        return b.run(py::none(), step, py::none(), scalars, CpuBound::Driver::Cpu, py::none(),
                     grad_norm);
      },
      py::arg("algo"), py::arg("lists"), py::arg("hyper"), py::arg("step") = py::none(),
      py::arg("scalars") = py::none(), py::arg("name") = "", py::arg("grad_norm") = py::none(),
      py::arg("param_copies") = py::none(), py::arg("sr_seed") = py::none(),
      py::arg("kahan_comps") = py::none(),
      "bind(algo, lists, hyper, name=name).run(step=step, scalars=scalars, grad_norm=grad_norm) "
      "in one call, holding nothing: fusedopt.functional's one-shot call.");

  cpu.def(
      "rmw",
      [](py::handle params, py::handle grads, py::list states, py::handle writes) {
        const int nbuf = 2 + static_cast<int>(states.size());
        if (nbuf > kMaxBuffers) {
          throw py::value_error("rmw: at most " + std::to_string(kMaxBuffers - 2) +
                                " state lists, got " + std::to_string(states.size()));
        }
        const int nwrite = writes.is_none() ? nbuf - 1 : writes.cast<int>();
        if (nwrite < 0 || nwrite > nbuf - 1) {
          throw py::value_error("rmw: writes must be 0.." + std::to_string(nbuf - 1) + ", got " +
                                std::to_string(nwrite));
        }
        static const char* names[] = {"states[0]", "states[1]", "states[2]"};
        std::vector<ListArg> args{{"params", params, Role::Param}, {"grads", grads, Role::Grad}};
        for (size_t k = 0; k < states.size(); ++k) args.push_back({names[k], states[k], Role::State});
        const Names who("rmw", py::none());
        Site sites[kMaxBuffers];
        for (int k = 0; k < nbuf; ++k) sites[k] = {&who, args[k].name};
        const CheckedCall call = check_call(who, args.data(), nbuf, sites);
        const int threads = thread_setting();
        py::gil_scoped_release nogil;
        for (const WorkList& wl : call.lists) cpu::active().rmw(wl.view(threads), nbuf, nwrite);
      },
      py::arg("params"), py::arg("grads"), py::arg("states"), py::arg("writes") = py::none(),
      "Benchmark ceiling: params += grads and each state += grads over the same driver, i.e. "
      "the memory traffic of an algorithm with that many state buffers. With `writes` w, only "
      "params and the first w - 1 state lists are written (the others only read; w = 0: a "
      "reduction pass reading every list): the traffic of a pass of a spec of several.");

  cpu.def(
      "set_num_threads",
      [](py::handle n) {
        if (!PyLong_Check(n.ptr()) || PyBool_Check(n.ptr())) {
          throw py::type_error("set_num_threads: n must be an int, got " + type_name(n));
        }
        const long long v = n.cast<long long>();
        if (v < 0 || v > 1 << 20) {
          throw py::value_error("set_num_threads: n must be >= 0, got " + std::to_string(v));
        }
        set_thread_setting(static_cast<int>(v));
      },
      py::arg("n"), "Threads for the CPU kernels; 0 restores OpenMP's default (OMP_NUM_THREADS).");
  cpu.def("get_num_threads", []() {
    const int n = thread_setting();
#if defined(_OPENMP)
    return n > 0 ? n : omp_get_max_threads();
#else
    (void)n;
    return 1;
#endif
  });
  cpu.def(
      "set_simd",
      [](const std::string& name) {
        if (!cpu::select_isa(name.c_str())) {
          throw py::value_error("set_simd: '" + name +
                                "' is not compiled into this build or not supported by this CPU");
        }
      },
      py::arg("name"));
  cpu.def("chunk_size", []() { return cpu::kChunk; });
}

void def_emulation(py::module_& m) {
  py::module_ e = m.def_submodule(
      "_cuda_emulation",
      "For the tests only: the CUDA driver run on the host (Note [The emulated CUDA driver], "
      "csrc/cuda/emulate.h), over NumPy arrays, and its plan of a call's launches.");
  e.def(
      "call",
      [](const std::string& algo, py::handle lists, py::handle hyper, py::handle step,
         py::handle scalars) {
        CpuBound b(find_spec(algo), lists, hyper, algo, py::none(), false, py::none(), false);
        return b.run(py::none(), step, py::none(), scalars, CpuBound::Driver::EmulatedCuda);
      },
      py::arg("algo"), py::arg("lists"), py::arg("hyper"), py::arg("step") = py::none(),
      py::arg("scalars") = py::none(),
      "cpu.call, but the kernels are the CUDA driver's, every block and thread run on the host.");
  e.def(
      "plan",
      [](std::vector<int64_t> numels, int nbuf, bool reduce) -> py::list {
        if (nbuf < 1 || nbuf > kMaxBuffers || (reduce && nbuf > 3)) {
          throw py::value_error("plan: nbuf must be 1.." + std::to_string(kMaxBuffers) +
                                " (1..3 for a reduction)");
        }
        switch (nbuf * 2 + (reduce ? 1 : 0)) {
          case 2: return plan_of<cuda::TensorListArgs<1>>(numels);
          case 3: return plan_of<cuda::ReduceListArgs<1>>(numels);
          case 4: return plan_of<cuda::TensorListArgs<2>>(numels);
          case 5: return plan_of<cuda::ReduceListArgs<2>>(numels);
          case 6: return plan_of<cuda::TensorListArgs<3>>(numels);
          case 7: return plan_of<cuda::ReduceListArgs<3>>(numels);
          case 8: return plan_of<cuda::TensorListArgs<4>>(numels);
          case 10: return plan_of<cuda::TensorListArgs<5>>(numels);
          default: return py::list();
        }
      },
      py::arg("numels"), py::arg("nbuf"), py::arg("reduce") = false,
      "The launches the CUDA launcher makes of tensors of these sizes with nbuf buffers: each a "
      "dict of its blocks (tensor in the launch, chunk, first element, elements, output row), "
      "its tensors' numel, its first chunk (reductions), the tensors a launch may hold and the "
      "bytes of its argument list. Needs no memory: the sizes may pass 2^31.");
}

#pragma GCC visibility pop

}  // namespace fusedopt::bindings
