// fusedopt._core.cuda: the GPU-pointer API. The same functions, list names and keyword-only
// hyper-parameters as _core.cpu (module.cpp), but each list holds device pointers (ints) and the
// call also takes `sizes` (elements per tensor), `dtype` and the `stream` to queue the update on.
// Everything is checked before anything is launched: list types and lengths, sizes, dtypes, null
// and misaligned pointers, overlap, and (through cudaPointerGetAttributes) that every buffer is
// device memory of one device. Nothing is copied; nothing is synchronized.
// fusedopt.functional reaches it through python/fusedopt/_buffers.py, which turns CuPy, PyTorch and
// DLPack arrays into these pointers.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../cuda/kernels.h"
#include "checks.h"

namespace py = pybind11;
using namespace py::literals;

namespace fusedopt::bindings {

#pragma GCC visibility push(hidden)  // as pybind11 builds the module

namespace {

using Betas = std::pair<double, double>;

std::string hex(uintptr_t p) {
  char buf[2 + 16 + 1];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(p));
  return buf;
}

const char* dtype_name(DType d) { return d == DType::Float32 ? "float32" : "float64"; }
int64_t itemsize(DType d) { return d == DType::Float32 ? 4 : 8; }

// Runs a call into csrc/cuda/, whose failures are std::runtime_error with CUDA's text, and names
// the function in the RuntimeError that reaches Python.
template <class F>
void cuda_call(const char* fn, F&& f) {
  try {
    f();
  } catch (const py::builtin_exception&) {
    throw;
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(std::string(fn) + ": " + e.what());
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
uintptr_t as_handle(const Fail& fail, const std::string& what, PyObject* o, const char* expected) {
  if (!PyLong_Check(o) || PyBool_Check(o)) {
    fail.type(what + " is a " + type_name(o) + ", expected " + expected);
  }
  const unsigned long long v = PyLong_AsUnsignedLongLong(o);
  if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();
    fail.value(what + " is " + py::repr(o).cast<std::string>() + ", not " + expected);
  }
  return static_cast<uintptr_t>(v);
}

DType parse_dtype(const Fail& fail, const std::string& what, py::handle h) {
  if (!PyUnicode_Check(h.ptr())) {
    fail.type(what + " must be 'float32' or 'float64', got a " + type_name(h));
  }
  const std::string s = py::reinterpret_borrow<py::str>(h).cast<std::string>();
  if (s == "float32") return DType::Float32;
  if (s == "float64") return DType::Float64;
  fail.type(what + " is '" + s + "', expected 'float32' or 'float64'");
}

// A validated call on device buffers: one DeviceList per dtype present, all on one device.
class DeviceBatch {
 public:
  DeviceBatch(const char* fn, std::initializer_list<ListArg> args, py::handle sizes,
              py::handle dtype, uintptr_t stream, py::handle wait_streams)
      : DeviceBatch(fn, args.begin(), static_cast<int>(args.size()), sizes, dtype, stream,
                    wait_streams) {}
  DeviceBatch(const char* fn, const ListArg* args, int nargs, py::handle sizes, py::handle dtype,
              uintptr_t stream, py::handle wait_streams);

  // Queues the waits, then fn(list) for each dtype group, with the GIL released.
  template <class F>
  void run(F&& fn) const {
    if (tensors_[0].empty() && tensors_[1].empty()) return;
    cuda_call(fn_, [&] {
      py::gil_scoped_release nogil;
      for (uintptr_t w : waits_) cuda::stream_wait(device_, stream_, w);
      for (int d = 0; d < 2; ++d) {
        if (tensors_[d].empty()) continue;
        const cuda::DeviceList l{tensors_[d].data(), static_cast<int64_t>(tensors_[d].size()),
                                 d == 0 ? DType::Float32 : DType::Float64, device_, stream_};
        fn(l);
      }
    });
  }

 private:
  const char* fn_;
  std::vector<TensorRef> tensors_[2];  // float32, float64; numel > 0 only
  int device_ = -1;
  uintptr_t stream_ = 0;
  std::vector<uintptr_t> waits_;
};

DeviceBatch::DeviceBatch(const char* fn, const ListArg* a, int nargs, py::handle sizes,
                         py::handle dtype, uintptr_t stream, py::handle wait_streams)
    : fn_(fn), stream_(stream) {
  const Fail fail{fn};

  // 1. Every list is a list or tuple, all of one length; sizes too.
  for (int k = 0; k < nargs; ++k) {
    if (!is_seq(a[k].list)) {
      fail.type(std::string(a[k].name) + " must be a list or tuple of device pointers (int), got " +
                type_name(a[k].list));
    }
  }
  const size_t n = seq_len(a[0].list);
  for (int k = 1; k < nargs; ++k) {
    if (seq_len(a[k].list) != n) {
      fail.value(std::string(a[k].name) + " has " + std::to_string(seq_len(a[k].list)) +
                 " pointers, expected " + std::to_string(n) + " (one per param)");
    }
  }
  if (!is_seq(sizes)) fail.type("sizes must be a list or tuple of ints, got " + type_name(sizes));
  if (seq_len(sizes) != n) {
    fail.value("sizes has " + std::to_string(seq_len(sizes)) + " entries, expected " +
               std::to_string(n) + " (one per param)");
  }

  // 2. dtype: one name for the whole call, or one per tensor.
  std::vector<DType> dtypes;
  if (is_seq(dtype)) {
    if (seq_len(dtype) != n) {
      fail.value("dtype has " + std::to_string(seq_len(dtype)) + " entries, expected " +
                 std::to_string(n) + " (one per param)");
    }
    for (size_t i = 0; i < n; ++i) dtypes.push_back(parse_dtype(fail, item("dtype", i), at(dtype, i)));
  } else {
    dtypes.assign(n, parse_dtype(fail, "dtype", dtype));
  }

  // 3. Every pointer, index by index: an int, and for a non-empty tensor non-null and aligned.
  std::vector<Span> spans;
  spans.reserve(n * nargs);
  for (size_t i = 0; i < n; ++i) {
    PyObject* s = at(sizes, i);
    if (!PyLong_Check(s) || PyBool_Check(s)) {
      fail.type(item("sizes", i) + " is a " + type_name(s) + ", expected an int");
    }
    int overflow = 0;
    const long long numel = PyLong_AsLongLongAndOverflow(s, &overflow);
    if (overflow != 0 || numel < 0 || numel > (INT64_MAX >> 4)) {
      fail.value(item("sizes", i) + " is " + py::repr(s).cast<std::string>() +
                 ", expected a number of elements >= 0");
    }
    const DType dt = dtypes[i];
    TensorRef t{};
    t.numel = numel;
    for (int k = 0; k < nargs; ++k) {
      const uintptr_t p =
          as_handle(fail, item(a[k].name, i), at(a[k].list, i), "a device pointer (int)");
      t.ptr[k] = reinterpret_cast<void*>(p);
      if (numel == 0) continue;
      if (p == 0) {
        fail.value(item(a[k].name, i) + " is a null pointer (with " + std::to_string(numel) +
                   " elements)");
      }
      if (p % itemsize(dt) != 0) {
        fail.value(item(a[k].name, i) + " = " + hex(p) + " is not aligned to " +
                   std::to_string(itemsize(dt)) + " bytes (the size of " + dtype_name(dt) + ")");
      }
      spans.push_back({p, p + static_cast<uintptr_t>(numel * itemsize(dt)), k != 1, k, i});
    }
    if (numel == 0) continue;
    const int d = dt == DType::Float32 ? 0 : 1;
    tensors_[d].push_back(t);
  }

  // 4. No written buffer may share memory with any other buffer of the call.
  check_no_overlap(fail, a, spans);

  // 5. The streams to wait for (optional).
  if (!wait_streams.is_none()) {
    if (!is_seq(wait_streams)) {
      fail.type("wait_streams must be a list or tuple of stream handles (int), got " +
                type_name(wait_streams));
    }
    for (size_t j = 0; j < seq_len(wait_streams); ++j) {
      const uintptr_t w =
          as_handle(fail, item("wait_streams", j), at(wait_streams, j), "a stream handle (int)");
      if (w != stream_) waits_.push_back(w);
    }
  }

  // 6. Last, the only checks that need the driver: every buffer is device memory of one device.
  // Note [One driver query per allocation]: cudaPointerGetAttributes costs about 1 us, 80 ms for a
  // step over 20,000 tensors with four buffers each. The buffers are visited in address order and
  // the driver is asked once per allocation (cuMemGetAddressRange): a buffer that lies wholly
  // inside the allocation last asked about shares its answer. Pool allocators (PyTorch's, CuPy's)
  // carve many tensors out of each allocation. A buffer that runs past its allocation's end is
  // asked about on its own, as before (with expandable segments a tensor may span several
  // allocations, so that is not an error). The messages still name the first bad buffer in
  // argument order.
  if (spans.empty()) return;
  std::vector<cuda::PointerInfo> infos(spans.size());  // spans[j]'s answer
  uintptr_t known_lo = 0, known_hi = 0;  // the last allocation checked; empty at first
  cuda::PointerInfo known{};
  for (size_t j = 0; j < spans.size(); ++j) {  // in address order: check_no_overlap sorted them
    const Span& s = spans[j];
    if (!(s.lo >= known_lo && s.hi <= known_hi)) {
      cuda_call(fn, [&] { known = cuda::pointer_info(reinterpret_cast<const void*>(s.lo)); });
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
  // The call's device is that of its first buffer in argument order; the error names the first
  // buffer, in argument order, that is host memory or on another device.
  const auto before = [&](size_t x, size_t y) {
    return spans[x].arg != spans[y].arg ? spans[x].arg < spans[y].arg
                                        : spans[x].index < spans[y].index;
  };
  const size_t n_spans = spans.size();
  size_t first = 0;
  for (size_t j = 1; j < n_spans; ++j) {
    if (before(j, first)) first = j;
  }
  device_ = infos[first].device;
  size_t bad = n_spans;
  for (size_t j = 0; j < n_spans; ++j) {
    if ((is_host(infos[j]) || infos[j].device != device_) && (bad == n_spans || before(j, bad))) {
      bad = j;
    }
  }
  if (bad == n_spans) return;
  const Span& s = spans[bad];
  if (is_host(infos[bad])) {
    fail.type(item(a[s.arg].name, s.index) + " = " + hex(s.lo) +
              " is host memory, expected CUDA device memory (host and device arrays cannot be "
              "mixed in one call)");
  }
  const Span& f = spans[first];
  fail.value(item(a[s.arg].name, s.index) + " is on cuda:" + std::to_string(infos[bad].device) +
             ", expected cuda:" + std::to_string(device_) + " (the device of " +
             item(a[f.arg].name, f.index) + ")");
}

bool given(const py::object& o) { return !o.is_none(); }

void check_step(const char* fn, int64_t step) {
  if (step < 1) Fail{fn}.value("step must be >= 1, got " + std::to_string(step));
}

// The arguments every function takes after its lists, in this order, before its hyper-parameters.
#define FUSEDOPT_DEVICE_ARGS \
  "sizes"_a, "dtype"_a, "stream"_a = 0, "wait_streams"_a = py::none()

void def_kernels(py::module_& m) {
  m.def(
      "sgd",
      [](py::object params, py::object grads, py::object momentum_buffers, py::object sizes,
         py::object dtype, uintptr_t stream, py::object wait, int64_t step, double lr,
         double momentum, double dampening, double weight_decay, bool nesterov, bool maximize) {
        check_step("sgd", step);
        const bool use_buf = momentum != 0.0;
        if (use_buf && !given(momentum_buffers)) {
          throw py::value_error("sgd: momentum_buffers are required when momentum != 0");
        }
        const ListArg p{"params", params}, g{"grads", grads}, mb{"momentum_buffers", momentum_buffers};
        DeviceBatch b = use_buf ? DeviceBatch("sgd", {p, g, mb}, sizes, dtype, stream, wait)
                                : DeviceBatch("sgd", {p, g}, sizes, dtype, stream, wait);
        const SgdHyper h{lr, momentum, dampening, weight_decay, nesterov, maximize};
        b.run([&](const cuda::DeviceList& l) { cuda::sgd(l, h, step); });
      },
      "params"_a, "grads"_a, "momentum_buffers"_a = py::none(), py::kw_only(),
      FUSEDOPT_DEVICE_ARGS, "step"_a, "lr"_a, "momentum"_a, "dampening"_a, "weight_decay"_a,
      "nesterov"_a, "maximize"_a);

  m.def(
      "adagrad",
      [](py::object params, py::object grads, py::object state_sums, py::object sizes,
         py::object dtype, uintptr_t stream, py::object wait, int64_t step, double lr,
         double lr_decay, double weight_decay, double eps, bool maximize) {
        check_step("adagrad", step);
        DeviceBatch b("adagrad", {{"params", params}, {"grads", grads}, {"state_sums", state_sums}},
                      sizes, dtype, stream, wait);
        const AdagradHyper h{lr, lr_decay, weight_decay, eps, maximize};
        b.run([&](const cuda::DeviceList& l) { cuda::adagrad(l, h, step); });
      },
      "params"_a, "grads"_a, "state_sums"_a, py::kw_only(), FUSEDOPT_DEVICE_ARGS, "step"_a,
      "lr"_a, "lr_decay"_a, "weight_decay"_a, "eps"_a, "maximize"_a);

  m.def(
      "adadelta",
      [](py::object params, py::object grads, py::object square_avgs, py::object acc_deltas,
         py::object sizes, py::object dtype, uintptr_t stream, py::object wait, int64_t step,
         double lr, double rho, double eps, double weight_decay, bool maximize) {
        check_step("adadelta", step);
        DeviceBatch b("adadelta",
                      {{"params", params}, {"grads", grads}, {"square_avgs", square_avgs},
                       {"acc_deltas", acc_deltas}},
                      sizes, dtype, stream, wait);
        const AdadeltaHyper h{lr, rho, eps, weight_decay, maximize};
        b.run([&](const cuda::DeviceList& l) { cuda::adadelta(l, h, step); });
      },
      "params"_a, "grads"_a, "square_avgs"_a, "acc_deltas"_a, py::kw_only(), FUSEDOPT_DEVICE_ARGS,
      "step"_a, "lr"_a, "rho"_a, "eps"_a, "weight_decay"_a, "maximize"_a);

  m.def(
      "rmsprop",
      [](py::object params, py::object grads, py::object square_avgs, py::object momentum_buffers,
         py::object grad_avgs, py::object sizes, py::object dtype, uintptr_t stream,
         py::object wait, int64_t step, double lr, double alpha, double eps, double weight_decay,
         double momentum, bool centered, bool maximize) {
        check_step("rmsprop", step);
        const bool use_buf = momentum > 0.0;
        if (use_buf && !given(momentum_buffers)) {
          throw py::value_error("rmsprop: momentum_buffers are required when momentum > 0");
        }
        if (centered && !given(grad_avgs)) {
          throw py::value_error("rmsprop: grad_avgs are required when centered=True");
        }
        const ListArg p{"params", params}, g{"grads", grads}, sq{"square_avgs", square_avgs},
            mb{"momentum_buffers", momentum_buffers}, ga{"grad_avgs", grad_avgs};
        // Buffer order is the kernel's: param, grad, square_avg[, momentum_buffer][, grad_avg].
        auto batch = [&](std::initializer_list<ListArg> l) {
          return DeviceBatch("rmsprop", l, sizes, dtype, stream, wait);
        };
        DeviceBatch b = use_buf ? (centered ? batch({p, g, sq, mb, ga}) : batch({p, g, sq, mb}))
                                : (centered ? batch({p, g, sq, ga}) : batch({p, g, sq}));
        const RmspropHyper h{lr, alpha, eps, weight_decay, momentum, centered, maximize};
        b.run([&](const cuda::DeviceList& l) { cuda::rmsprop(l, h, step); });
      },
      "params"_a, "grads"_a, "square_avgs"_a, "momentum_buffers"_a = py::none(),
      "grad_avgs"_a = py::none(), py::kw_only(), FUSEDOPT_DEVICE_ARGS, "step"_a, "lr"_a,
      "alpha"_a, "eps"_a, "weight_decay"_a, "momentum"_a, "centered"_a, "maximize"_a);

  m.def(
      "adam",
      [](py::object params, py::object grads, py::object exp_avgs, py::object exp_avg_sqs,
         py::object max_exp_avg_sqs, py::object sizes, py::object dtype, uintptr_t stream,
         py::object wait, int64_t step, double lr, Betas betas, double eps, double weight_decay,
         bool amsgrad, bool maximize, bool decoupled_weight_decay) {
        check_step("adam", step);
        if (amsgrad && !given(max_exp_avg_sqs)) {
          throw py::value_error("adam: max_exp_avg_sqs are required when amsgrad=True");
        }
        const ListArg p{"params", params}, g{"grads", grads}, m{"exp_avgs", exp_avgs},
            v{"exp_avg_sqs", exp_avg_sqs}, vmax{"max_exp_avg_sqs", max_exp_avg_sqs};
        DeviceBatch b = amsgrad ? DeviceBatch("adam", {p, g, m, v, vmax}, sizes, dtype, stream, wait)
                                : DeviceBatch("adam", {p, g, m, v}, sizes, dtype, stream, wait);
        const AdamHyper h{lr,      betas.first, betas.second,          eps, weight_decay,
                          amsgrad, maximize,    decoupled_weight_decay};
        b.run([&](const cuda::DeviceList& l) { cuda::adam(l, h, step); });
      },
      "params"_a, "grads"_a, "exp_avgs"_a, "exp_avg_sqs"_a, "max_exp_avg_sqs"_a = py::none(),
      py::kw_only(), FUSEDOPT_DEVICE_ARGS, "step"_a, "lr"_a, "betas"_a, "eps"_a,
      "weight_decay"_a, "amsgrad"_a, "maximize"_a, "decoupled_weight_decay"_a);

  m.def(
      "nadam",
      [](py::object params, py::object grads, py::object exp_avgs, py::object exp_avg_sqs,
         py::object sizes, py::object dtype, uintptr_t stream, py::object wait, int64_t step,
         py::object mu_product, double lr, Betas betas, double eps, double weight_decay,
         double momentum_decay, bool decoupled_weight_decay, bool maximize) {
        check_step("nadam", step);
        const NadamHyper h{lr,           betas.first,    betas.second,           eps,
                           weight_decay, momentum_decay, decoupled_weight_decay, maximize};
        double mu_prev = 1.0;
        if (given(mu_product)) {
          mu_prev = mu_product.cast<double>();
        } else {
          for (int64_t t = 1; t < step; ++t) mu_prev *= nadam_mu(h, t);
        }
        DeviceBatch b("nadam",
                      {{"params", params}, {"grads", grads}, {"exp_avgs", exp_avgs},
                       {"exp_avg_sqs", exp_avg_sqs}},
                      sizes, dtype, stream, wait);
        double mu_new = mu_prev * nadam_mu(h, step);
        b.run([&](const cuda::DeviceList& l) { cuda::nadam(l, h, step, mu_prev, &mu_new); });
        return mu_new;
      },
      "params"_a, "grads"_a, "exp_avgs"_a, "exp_avg_sqs"_a, py::kw_only(), FUSEDOPT_DEVICE_ARGS,
      "step"_a, "mu_product"_a = py::none(), "lr"_a, "betas"_a, "eps"_a, "weight_decay"_a,
      "momentum_decay"_a, "decoupled_weight_decay"_a, "maximize"_a);

  m.def(
      "adamax",
      [](py::object params, py::object grads, py::object exp_avgs, py::object exp_infs,
         py::object sizes, py::object dtype, uintptr_t stream, py::object wait, int64_t step,
         double lr, Betas betas, double eps, double weight_decay, bool maximize) {
        check_step("adamax", step);
        DeviceBatch b("adamax",
                      {{"params", params}, {"grads", grads}, {"exp_avgs", exp_avgs},
                       {"exp_infs", exp_infs}},
                      sizes, dtype, stream, wait);
        const AdamaxHyper h{lr, betas.first, betas.second, eps, weight_decay, maximize};
        b.run([&](const cuda::DeviceList& l) { cuda::adamax(l, h, step); });
      },
      "params"_a, "grads"_a, "exp_avgs"_a, "exp_infs"_a, py::kw_only(), FUSEDOPT_DEVICE_ARGS,
      "step"_a, "lr"_a, "betas"_a, "eps"_a, "weight_decay"_a, "maximize"_a);

  m.def(
      "ewa",
      [](py::object averages, py::object values, py::object sizes, py::object dtype,
         uintptr_t stream, py::object wait, double beta) {
        DeviceBatch b("ewa", {{"averages", averages}, {"values", values}}, sizes, dtype, stream,
                      wait);
        const EwaHyper h{beta};
        b.run([&](const cuda::DeviceList& l) { cuda::ewa(l, h); });
      },
      "averages"_a, "values"_a, py::kw_only(), FUSEDOPT_DEVICE_ARGS, "beta"_a);

  m.def(
      "ewa_readout",
      [](py::object averages, py::object outs, py::object sizes, py::object dtype,
         uintptr_t stream, py::object wait, double beta, int64_t step) {
        check_step("ewa_readout", step);
        // Kernel order: the written buffer first, the read-only average second.
        DeviceBatch b("ewa_readout", {{"outs", outs}, {"averages", averages}}, sizes, dtype,
                      stream, wait);
        const EwaHyper h{beta};
        b.run([&](const cuda::DeviceList& l) { cuda::ewa_readout(l, h, step); });
      },
      "averages"_a, "outs"_a, py::kw_only(), FUSEDOPT_DEVICE_ARGS, "beta"_a, "step"_a);

  m.def(
      "check",
      [](const std::string& fn, py::list args, py::object sizes, py::object dtype,
         uintptr_t stream, py::object wait) {
        std::vector<std::string> names;
        const std::vector<ListArg> lists = named_lists(args, names);
        DeviceBatch(fn.c_str(), lists.data(), static_cast<int>(lists.size()), sizes, dtype, stream,
                    wait);
      },
      "fn"_a, "args"_a, py::kw_only(), FUSEDOPT_DEVICE_ARGS,
      "Checks the pointer lists of one call as fn would (args: its (name, list) pairs in the "
      "kernel's order: the first written, the second only read, the rest written), the driver "
      "checks included, launching nothing. As _core.cpu.check.");
}

#undef FUSEDOPT_DEVICE_ARGS

}  // namespace

#pragma GCC visibility pop

// Adds the submodule `cuda` to m (called from module.cpp when built with CUDA).
void def_cuda(py::module_& m) {
  py::module_ c = m.def_submodule(
      "cuda",
      "Fused multi-tensor update kernels on CUDA device memory, for callers with their own "
      "pointers: lists of device pointers (ints), sizes (elements), dtype ('float32'/'float64', "
      "or one per tensor), the stream to queue on (a cudaStream_t as int; 0 is the legacy default "
      "stream) and optional wait_streams the update must follow. Hyper-parameters as _core.cpu.");
  def_kernels(c);
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
