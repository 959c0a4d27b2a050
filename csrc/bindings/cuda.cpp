// fusedopt._core.cuda: the generic binder for CUDA device pointers (Note [A bound call],
// bound.h). The same specs, list names and hyper-parameters as _core.cpu, but each list holds
// device pointers (ints), and bind also takes `sizes` (elements per tensor) and `dtype`; a run
// takes the `stream` to queue on. Everything is checked before anything is launched: list types
// and lengths, sizes, dtypes, null and misaligned pointers, overlap, and (through the driver)
// that every buffer is device memory of one device. Nothing is copied; nothing is synchronized.
// fusedopt._cuda_calls reaches it, turning CuPy, PyTorch and DLPack arrays into these pointers
// after checking their shapes, dtypes and layouts.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../cuda/kernels.h"
#include "bound.h"

namespace fusedopt::bindings {

#pragma GCC visibility push(hidden)

namespace {

std::string hex(uintptr_t p) {
  char buf[2 + 16 + 1];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(p));
  return buf;
}

// Runs a call into csrc/cuda/, whose failures are std::runtime_error with CUDA's text, and names
// the function in the RuntimeError that reaches Python.
template <class F>
void cuda_call(const Names& names, F&& f) {
  try {
    f();
  } catch (const py::builtin_exception&) {
    throw;
  } catch (const py::error_already_set&) {
    throw;
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(names.fn() + ": " + e.what());
  }
}

// Memory the kernels cannot update: plain (unregistered) or pinned host memory.
bool is_host(const cuda::PointerInfo& info) {
  return info.kind == cuda::MemoryKind::Unregistered || info.kind == cuda::MemoryKind::Host;
}

bool is_seq(py::handle h) { return PyList_Check(h.ptr()) || PyTuple_Check(h.ptr()); }
PyObject* at(py::handle seq, size_t i) { return PySequence_Fast_ITEMS(seq.ptr())[i]; }
size_t seq_len(py::handle seq) { return static_cast<size_t>(PySequence_Fast_GET_SIZE(seq.ptr())); }

// A pointer or stream handle: a Python int in [0, 2^64).
uintptr_t as_handle(const Names& names, const std::string& what, PyObject* o, const char* expected) {
  if (!PyLong_Check(o) || PyBool_Check(o)) {
    names.type(what + " is a " + type_name(o) + ", expected " + expected);
  }
  const unsigned long long v = PyLong_AsUnsignedLongLong(o);
  if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();
    names.value(what + " is " + repr_of(o) + ", not " + expected);
  }
  return static_cast<uintptr_t>(v);
}

DType parse_dtype(const Names& names, const std::string& what, py::handle h) {
  // The CUDA kernels run the compiled combinations only (Note [Staged storage]: staging is the
  // CPU driver's).
  std::string expected;
  for (int c = 0; c < kNumCompiledCombos; ++c) {
    const std::string d = std::string("'") + dtype_name(kCombos.at[c].param) + "'";
    if (expected.find(d) == std::string::npos) expected += (expected.empty() ? "" : " or ") + d;
  }
  if (!PyUnicode_Check(h.ptr())) {
    names.type(what + " must be " + expected + ", got a " + type_name(h));
  }
  const std::string s = py::reinterpret_borrow<py::str>(h).cast<std::string>();
  for (int c = 0; c < kNumCompiledCombos; ++c) {
    if (s == dtype_name(kCombos.at[c].param)) return kCombos.at[c].param;
  }
  names.type(what + " is '" + s + "', expected " + expected);
}

// The first combination with param type d (the grads' and states' types follow from it until a
// param type has several: then bind must be told them).
int combo_for(DType d) {
  for (int c = 0; c < kNumCompiledCombos; ++c) {
    if (kCombos.at[c].param == d) return c;
  }
  return -1;
}

// The driver's word on the buffers of `spans` (sorted by address, as check_no_overlap leaves
// them): every one is device memory of one device, `*device` (-1: that of the first in argument
// order).
//
// Note [One driver query per allocation]
// The buffers are visited in address order and the driver is asked once per allocation
// (cuMemGetAddressRange): a buffer that lies wholly inside the allocation last asked about shares
// its answer. Pool allocators (PyTorch's, CuPy's) carve
// many tensors out of each allocation, and a pointer query per buffer would cost more than the
// update for a step over many small tensors. A buffer that runs past its allocation's end is asked
// about on its own (with expandable segments a tensor may span several allocations, so that is not
// an error). The messages name the first bad buffer in argument order.
void check_device(const Names& names, const std::vector<Span>& spans, int* device,
                  const std::string& device_of) {
  if (spans.empty()) return;
  std::vector<cuda::PointerInfo> infos(spans.size());
  uintptr_t known_lo = 0, known_hi = 0;  // the last allocation checked; empty at first
  cuda::PointerInfo known{};
  for (size_t j = 0; j < spans.size(); ++j) {
    const Span& s = spans[j];
    if (!(s.lo >= known_lo && s.hi <= known_hi)) {
      cuda_call(names, [&] { known = cuda::pointer_info(reinterpret_cast<const void*>(s.lo)); });
      uintptr_t base = 0;
      size_t size = 0;
      if (!is_host(known) &&
          cuda::allocation_range(reinterpret_cast<const void*>(s.lo), &base, &size) &&
          base <= s.lo && s.hi <= base + size) {
        known_lo = base;
        known_hi = base + size;
      } else {
        known_lo = s.lo;  // this buffer alone
        known_hi = s.hi;
      }
    }
    infos[j] = known;
  }
  const auto before = [&](size_t x, size_t y) {
      return spans[x].rank != spans[y].rank ? spans[x].rank < spans[y].rank
                                          : spans[x].i < spans[y].i;
  };
  const size_t n = spans.size();
  size_t first = 0;
  for (size_t j = 1; j < n; ++j) {
    if (before(j, first)) first = j;
  }
  std::string of = device_of;
  if (*device < 0) {
    *device = infos[first].device;
    of = spans[first].item();
  }
  size_t bad = n;
  for (size_t j = 0; j < n; ++j) {
    if ((is_host(infos[j]) || infos[j].device != *device) && (bad == n || before(j, bad))) bad = j;
  }
  if (bad == n) return;
  const Span& s = spans[bad];
  if (is_host(infos[bad])) {
    names.type(s.item() + " = " + hex(s.lo) +
               " is host memory, expected CUDA device memory (host and device arrays cannot be "
               "mixed in one call)");
  }
  names.value(s.item() + " is on cuda:" + std::to_string(infos[bad].device) +
              ", expected cuda:" + std::to_string(*device) + " (the device of " + of + ")");
}

class CudaBound : public Bound {
 public:
  CudaBound(const SpecInfo& spec, py::handle lists, py::handle sizes, py::handle dtype,
            py::handle hyper, std::string name, py::handle index, bool grads_later,
            py::handle aliases);
  void check(py::handle grads) {
    Busy busy(*this);
    checked_grads(grads, nullptr, 0);
  }
  py::object run(py::handle grads, py::handle step, py::handle lr, py::handle scalars,
                 py::handle stream, py::handle wait_streams, py::handle out,
                 py::handle grad_norm);
  std::vector<Span> grad_spans(py::handle grads, int rank) override {
    Busy busy(*this);
    if (grads.is_none() && grads_bound_) return bound_grad_spans(read_, rank);
    std::vector<Span> spans;
    checked_grads(grads, &spans, rank);
    return spans;
  }
  int device() const { return device_; }

 private:
  struct List {
    int combo;
    std::vector<TensorRef> tensors;
    std::vector<int64_t> origin;
  };
  std::vector<const char*> slot_name_;
  std::vector<int64_t> numel_;
  std::vector<int> combo_;  // per tensor
  std::vector<List> lists_;
  std::vector<std::pair<int, int64_t>> at_;
  std::vector<Span> read_;
  int device_ = -1;

  // The launches of a spec of several passes (Note [Passes]), on stream s after `waits`.
  void run_passes(int64_t t, std::vector<double>& h, std::vector<double>& in, double input,
                  uintptr_t s, const std::vector<uintptr_t>& waits);
  // Pointer i of slot k, checked: an int, and for a non-empty tensor non-null and aligned.
  uintptr_t pointer(int k, size_t i, PyObject* o) const;
  void checked_grads(py::handle grads, std::vector<Span>* spans, int rank);
};

uintptr_t CudaBound::pointer(int k, size_t i, PyObject* o) const {
  const std::string what = names_.item(slot_name_[k], i);
  const uintptr_t p = as_handle(names_, what, o, "a device pointer (int)");
  if (numel_[i] == 0) return p;
  const DType dt = slot_dtype(combo_[i], k);
  if (p == 0) names_.value(what + " is a null pointer (with " + std::to_string(numel_[i]) + " elements)");
  if (p % dtype_size(dt) != 0) {
    names_.value(what + " = " + hex(p) + " is not aligned to " + std::to_string(dtype_size(dt)) +
                 " bytes (the size of " + dtype_name(dt) + ")");
  }
  return p;
}

CudaBound::CudaBound(const SpecInfo& spec, py::handle lists, py::handle sizes, py::handle dtype,
                     py::handle hyper, std::string name, py::handle index, bool grads_later,
                     py::handle aliases)
    : Bound(spec, name.empty() ? std::string(spec.name) : std::move(name), index) {
  parse_hyper(hyper);
  const auto& bs = spec.buffers;
  const std::vector<int> sl = bind_lists(lists, aliases, grads_later);
  std::vector<py::handle> slot_list;
  std::vector<bool> present;
  for (int b : sl) {
    sites_[slot_name_.size()] = {&names_, aliases_[b].c_str()};
    slot_name_.push_back(aliases_[b].c_str());
    slot_list.push_back(PyTuple_GET_ITEM(lists.ptr(), b));
    const bool later = bs[b].role == Role::Grad && grads_later;
    present.push_back(!later);
  }
  const int nslots = static_cast<int>(sl.size());

  // 1. Every list is a list or tuple, all of one length; sizes too.
  for (int k = 0; k < nslots; ++k) {
    if (present[k] && !is_seq(slot_list[k])) {
      names_.type(std::string(slot_name_[k]) +
                  " must be a list or tuple of device pointers (int), got " + type_name(slot_list[k]));
    }
  }
  const size_t n = seq_len(slot_list[0]);
  for (int k = 1; k < nslots; ++k) {
    if (present[k] && seq_len(slot_list[k]) != n) {
      names_.value(std::string(slot_name_[k]) + " has " + std::to_string(seq_len(slot_list[k])) +
                   " pointers, expected " + std::to_string(n) + " (one per param)");
    }
  }
  if (!is_seq(sizes)) names_.type("sizes must be a list or tuple of ints, got " + type_name(sizes));
  if (seq_len(sizes) != n) {
    names_.value("sizes has " + std::to_string(seq_len(sizes)) + " entries, expected " +
                 std::to_string(n) + " (one per param)");
  }
  n_ = n;

  // 2. dtype: one name for the whole call, or one per tensor.
  std::vector<DType> dtypes;
  if (is_seq(dtype)) {
    if (seq_len(dtype) != n) {
      names_.value("dtype has " + std::to_string(seq_len(dtype)) + " entries, expected " +
                   std::to_string(n) + " (one per param)");
    }
    for (size_t i = 0; i < n; ++i) dtypes.push_back(parse_dtype(names_, names_.item("dtype", i), at(dtype, i)));
  } else {
    dtypes.assign(n, parse_dtype(names_, "dtype", dtype));
  }

  // 3. Every pointer, index by index.
  std::vector<Span> spans;
  spans.reserve(n * nslots);
  std::vector<List> per_combo(kNumCombos);
  for (int c = 0; c < kNumCombos; ++c) per_combo[c].combo = c;
  at_.assign(n, {-1, -1});
  for (size_t i = 0; i < n; ++i) {
    PyObject* s = at(sizes, i);
    if (!PyLong_Check(s) || PyBool_Check(s)) {
      names_.type(names_.item("sizes", i) + " is a " + type_name(s) + ", expected an int");
    }
    int overflow = 0;
    const long long numel = PyLong_AsLongLongAndOverflow(s, &overflow);
    if (overflow != 0 || numel < 0 || numel > (INT64_MAX >> 4)) {
      names_.value(names_.item("sizes", i) + " is " + repr_of(s) +
                   ", expected a number of elements >= 0");
    }
    numel_.push_back(numel);
    combo_.push_back(combo_for(dtypes[i]));
    TensorRef t{};
    t.numel = numel;
    for (int k = 0; k < nslots; ++k) {
      if (!present[k]) continue;
      const uintptr_t p = pointer(k, i, at(slot_list[k], i));
      t.ptr[k] = reinterpret_cast<void*>(p);
      if (numel == 0) continue;
      const Role role = bs[sl[k]].role;
      const bool written = role == Role::Param || role == Role::State;
      spans.push_back({p, p + static_cast<uintptr_t>(numel * dtype_size(slot_dtype(combo_[i], k))),
                       &sites_[k], static_cast<uint32_t>(i), static_cast<uint16_t>(k), written});
    }
    if (numel == 0) continue;
    List& l = per_combo[combo_[i]];
    at_[i] = {combo_[i], static_cast<int64_t>(l.tensors.size())};
    l.tensors.push_back(t);
    l.origin.push_back(static_cast<int64_t>(i));
  }

  // 4. No written buffer may share memory with any other buffer of the call.
  check_no_overlap(spans);

  // 5. Last, the only checks that need the driver: every buffer is device memory of one device.
  check_device(names_, spans, &device_, "");

  int remap[kNumCombos];
  for (int c = 0; c < kNumCombos; ++c) {
    remap[c] = -1;
    if (!per_combo[c].tensors.empty()) {
      remap[c] = static_cast<int>(lists_.size());
      lists_.push_back(std::move(per_combo[c]));
    }
  }
  for (auto& a : at_) {
    if (a.first >= 0) a.first = remap[a.first];
  }
  for (const Span& s : spans) (s.written ? written_ : read_).push_back(s);
}

void CudaBound::checked_grads(py::handle grads, std::vector<Span>* spans, int rank) {
  const char* gname = slot_name_[1];
  if (!is_seq(grads)) {
    names_.type(std::string(gname) + " must be a list or tuple of device pointers (int), got " +
                type_name(grads));
  }
  if (seq_len(grads) != n_) {
    names_.value(std::string(gname) + " has " + std::to_string(seq_len(grads)) +
                 " pointers, expected " + std::to_string(n_) + " (one per param)");
  }
  std::vector<Span> mine;
  for (size_t i = 0; i < n_; ++i) {
    const uintptr_t p = pointer(1, i, at(grads, i));
    if (numel_[i] == 0) continue;
    const uintptr_t hi = p + static_cast<uintptr_t>(numel_[i] * dtype_size(slot_dtype(combo_[i], 1)));
    if (const Span* o = overlapping(written_, p, hi)) {
      names_.value(names_.item(gname, i) + " overlaps " + o->item());
    }
    mine.push_back({p, hi, &sites_[1], static_cast<uint32_t>(i),
                    static_cast<uint16_t>(rank * 8 + 1), false});
  }
  std::sort(mine.begin(), mine.end(), [](const Span& x, const Span& y) { return x.lo < y.lo; });
  if (!mine.empty()) {
    int device = device_;
    check_device(names_, mine, &device, written_.front().item());
  }
  for (size_t j = 0; j < n_; ++j) {
    const auto [l, pos] = at_[j];
    if (l >= 0) {
      lists_[l].tensors[pos].ptr[1] =
          reinterpret_cast<void*>(PyLong_AsUnsignedLongLong(at(grads, j)));
    }
  }
  if (spans) spans->insert(spans->end(), mine.begin(), mine.end());
}

// Note [Passes] on the device: the sums, the call's and the tensors' values in one stream-ordered
// scratch allocation, each pass's launches, and between() as one device thread after each pass
// but the last: all queued on the stream, nothing synchronizes. Which passes run and what they
// sum is decided on the host, from the hyper-parameters and the run's input.
void CudaBound::run_passes(int64_t t, std::vector<double>& h, std::vector<double>& in,
                           double input, uintptr_t s, const std::vector<uintptr_t>& waits) {
  const int64_t n = static_cast<int64_t>(n_);
  const std::vector<int> ks = spec_.pass_plan(h.data(), input);
  const int most = std::max(0, *std::max_element(ks.begin(), ks.end()));
  const size_t count = static_cast<size_t>(n * most + spec_.call_values + n * spec_.tensor_values);
  const cuda::KernelFn kernel = cuda::kernels()[spec_.kernel];
  const cuda::BetweenFn between = cuda::between_kernels()[spec_.kernel];
  cuda_call(names_, [&] {
    py::gil_scoped_release nogil;
    for (uintptr_t w : waits) cuda::stream_wait(device_, s, w);
    const cuda::Scratch scratch(device_, s, count * sizeof(double));
    double* sums = static_cast<double*>(scratch.get());
    double* call = sums + n * most;
    double* tensor = call + spec_.call_values;
    cuda::zero_async(device_, s, sums, count * sizeof(double));
    cuda::set_async(device_, s, call, input);
    for (int pass = 0; pass < spec_.passes; ++pass) {
      const int k = ks[static_cast<size_t>(pass)];
      if (k > 0 && pass > 0) cuda::zero_async(device_, s, sums, static_cast<size_t>(n * k) * 8);
      if (k >= 0) {
        StepArgs a{t, in.data(), 1.0, pass, call, tensor, input};
        const cuda::Launch launch{h.data(), a, k > 0 ? sums : nullptr};
        for (const List& l : lists_) {
          kernel({l.tensors.data(), l.origin.data(), static_cast<int64_t>(l.tensors.size()),
                  l.combo, device_, s},
                 launch);
        }
      }
      if (pass + 1 < spec_.passes) {
        between(h.data(), t, pass, n, k > 0 ? sums : nullptr, call, tensor, device_, s);
      }
    }
  });
}

py::object CudaBound::run(py::handle grads, py::handle step, py::handle lr, py::handle scalars,
                          py::handle stream, py::handle wait_streams, py::handle out,
                          py::handle grad_norm) {
  Busy busy(*this);
  std::vector<double> h, in;
  const int64_t t = run_args(step, lr, scalars, h, in);
  const double input = run_input(grad_norm);
  if (!grads.is_none()) {
    if (!has_grad_slot_) names_.type(std::string(spec_.name) + " takes no grads");
    checked_grads(grads, nullptr, 0);
  } else if (has_grad_slot_ && !grads_bound_) {
    names_.type(std::string(slot_name_[1]) +
                " must be a list or tuple of device pointers (int), got NoneType");
  }
  const uintptr_t s = as_handle(names_, "stream", stream.ptr(), "a stream handle (int)");
  std::vector<uintptr_t> waits;
  if (!wait_streams.is_none()) {
    if (!is_seq(wait_streams)) {
      names_.type("wait_streams must be a list or tuple of stream handles (int), got " +
                  type_name(wait_streams));
    }
    for (size_t j = 0; j < seq_len(wait_streams); ++j) {
      const uintptr_t w = as_handle(names_, names_.item("wait_streams", j), at(wait_streams, j),
                                    "a stream handle (int)");
      if (w != s) waits.push_back(w);
    }
  }
  double* out_ptr = nullptr;
  const int K = spec_.reduce;
  if (K > 0) {
    if (out.is_none()) {
      names_.type("out is required: a device array of " + std::to_string(n_ * K) +
                  " float64 for the sums");
    }
    out_ptr = reinterpret_cast<double*>(as_handle(names_, "out", out.ptr(), "a device pointer (int)"));
  }
  if (device_ >= 0 && spec_.passes > 1) {
    run_passes(t, h, in, input, s, waits);
  } else if (device_ >= 0) {
    const cuda::Launch launch{h.data(), StepArgs{t, in.data()}, out_ptr};
    const cuda::KernelFn kernel = cuda::kernels()[spec_.kernel];
    cuda_call(names_, [&] {
      py::gil_scoped_release nogil;
      for (uintptr_t w : waits) cuda::stream_wait(device_, s, w);
      if (out_ptr) cuda::zero_async(device_, s, out_ptr, n_ * K * sizeof(double));
      for (const List& l : lists_) {
        kernel({l.tensors.data(), l.origin.data(), static_cast<int64_t>(l.tensors.size()), l.combo,
                device_, s},
               launch);
      }
    });
  }
  if (K > 0) return py::none();
  return scalars_result(h, t, in);
}

}  // namespace

#pragma GCC visibility pop

// Adds the submodule `cuda` to m (called from module.cpp when built with CUDA).
void def_cuda(py::module_& m) {
  py::module_ c = m.def_submodule(
      "cuda",
      "Fused multi-tensor update kernels on CUDA device memory, for callers with their own "
      "pointers: bind(algo, lists, sizes, dtype, hyper, ...) takes lists of device pointers "
      "(ints), sizes (elements per tensor) and dtype ('float32'/'float64', or one per tensor); "
      "a run takes the stream to queue on (a cudaStream_t as int; 0 is the legacy default "
      "stream) and optional wait_streams it must follow.");
  py::class_<CudaBound, Bound>(c, "Bound", py::module_local(),
                               "A call over device pointers, checked and bound (Note [A bound "
                               "call], csrc/bindings/bound.h).")
      .def("check", &CudaBound::check, py::arg("grads"),
           "Checks grad pointers as run does (the driver asked too); launches nothing.")
      .def("run", &CudaBound::run, py::arg("grads") = py::none(), py::kw_only(),
           py::arg("step") = py::none(), py::arg("lr") = py::none(),
           py::arg("scalars") = py::none(), py::arg("stream") = 0,
           py::arg("wait_streams") = py::none(), py::arg("out") = py::none(),
           py::arg("grad_norm") = py::none(),
           "Checks grads (None: those given to bind) and queues the update on `stream`, after "
           "`wait_streams`; a reduction adds its sums to `out` (n x kReduce float64 on the "
           "device, zeroed first). grad_norm: LAMB's norm of every grad of the step (None: "
           "this call's). Returns the scalar state after the step, or None.")
      .def_property_readonly("device", &CudaBound::device,
                             "The device of the call's buffers (-1 for a call of no elements).");
  c.def(
      "bind",
      [](const std::string& algo, py::handle lists, py::handle sizes, py::handle dtype,
         py::handle hyper, std::string name, py::handle index, bool grads_later,
         py::handle aliases) {
        return std::make_unique<CudaBound>(find_spec(algo), lists, sizes, dtype, hyper,
                                           std::move(name), index, grads_later, aliases);
      },
      py::arg("algo"), py::arg("lists"), py::arg("sizes"), py::arg("dtype"), py::arg("hyper"),
      py::kw_only(), py::arg("name") = "", py::arg("index") = py::none(),
      py::arg("grads_later") = false, py::arg("aliases") = py::none(),
      "As cpu.bind, over device pointers: `lists` of ints in the order of the algorithm's "
      "signature, `sizes` the elements of each tensor, `dtype` one name or one per tensor.");
  c.def("device_count", []() { return cuda::device_count(); },
        "CUDA devices visible; 0 without a driver or a device (never raises).");
  c.def("is_available", []() { return cuda::device_count() > 0; },
        "Whether a CUDA device can be used.");
  c.def(
      "info",
      []() {
        std::string why;
        const int n = cuda::device_count(&why);
        py::dict d;
        d["device_count"] = n;
        d["reason"] = n > 0 ? py::object(py::none()) : py::object(py::str(why));
        d["runtime_version"] = cuda::runtime_version();
        d["driver_version"] = cuda::driver_version();
        d["architectures"] = FUSEDOPT_CUDA_ARCHITECTURES;
        d["chunk_size"] = cuda::kChunk;
        return d;
      },
      "device_count, reason (why no device can be used, or None), runtime_version and "
      "driver_version (e.g. 13000; 0 without a driver), architectures compiled, chunk_size.");
}

}  // namespace fusedopt::bindings
