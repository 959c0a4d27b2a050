// fusedopt._core: the only C++ that knows Python. Each function validates its whole call (see
// buffers.h), releases the GIL and hands framework-free work lists to the CPU kernels chosen for
// this machine. Hyper-parameters are keyword-only and named as in fusedopt.functional.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdlib>
#include <functional>
#include <string>
#include <utility>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "buffers.h"

namespace py = pybind11;
using namespace py::literals;

namespace fusedopt::bindings {
#if defined(FUSEDOPT_WITH_CUDA)
void def_cuda(py::module_& m);  // cuda.cpp: the submodule _core.cuda
#endif
namespace {

using Betas = std::pair<double, double>;

// Runs fn(dtype, view) for each dtype group of the batch with the GIL released.
template <class F>
void run(const Batch& batch, F&& fn) {
  const int threads = thread_setting();
  py::gil_scoped_release nogil;
  for (const WorkList& wl : batch.lists()) fn(wl.dtype, wl.view(threads));
}

const cpu::KernelTable& K() { return cpu::active(); }

using Go = std::function<void(DType, const cpu::WorkView&)>;

// The call's lists checked in full, or through the caller's Plan (Note [The plan of a run]).
Batch make_batch(const py::object& plan, const char* fn, std::initializer_list<ListArg> args) {
  if (plan.is_none()) return Batch(fn, args);
  if (!py::isinstance<Plan>(plan)) {
    throw py::type_error(std::string(fn) + ": plan must be a fusedopt._core.cpu.Plan, got " +
                         type_name(plan));
  }
  return plan.cast<Plan&>().batch(fn, args);
}

// A call checked and ready to run: what a kernel function returns when called with
// prepare=True. The optimizer classes prepare every call of a step before they run the first, so
// that a step whose later call would be refused writes nothing, and each call is checked once
// (Note [Every call checked before the first]). It keeps its arrays alive (a tuple of each list
// as it was when checked) and runs once.
class Prepared {
 public:
  Prepared(std::string fn, Batch b, Go go, py::tuple keep, py::object result)
      : fn_(std::move(fn)),
        batch_(std::move(b)),
        go_(std::move(go)),
        keep_(std::move(keep)),
        result_(std::move(result)) {}

  py::object operator()() {
    if (done_) throw py::value_error(fn_ + ": this prepared call has run already");
    done_ = true;
    run(batch_, go_);
    keep_ = py::tuple();
    return result_;
  }
  const py::object& result() const { return result_; }

 private:
  std::string fn_;
  Batch batch_;
  Go go_;
  py::tuple keep_;
  py::object result_;
  bool done_ = false;
};

// Runs the checked call now, or (prepare) hands it back as a Prepared; returns result either way
// (the Prepared carries it). `lists`: every list argument of the call; each list or tuple is kept
// as a tuple of its items (the Batch checked those), anything else (None, or an argument this
// call does not use) as it is.
py::object finish(const char* fn, bool prepare, Batch&& b, Go go,
                  std::initializer_list<py::handle> lists, py::object result = py::none()) {
  if (!prepare) {
    run(b, go);
    return result;
  }
  py::tuple keep(lists.size());
  size_t k = 0;
  for (py::handle l : lists) {
    if (PyList_Check(l.ptr()) || PyTuple_Check(l.ptr())) {
      PyObject* t = PySequence_Tuple(l.ptr());
      if (t == nullptr) throw py::error_already_set();
      keep[k++] = py::reinterpret_steal<py::object>(t);
    } else {
      keep[k++] = py::reinterpret_borrow<py::object>(l);
    }
  }
  return py::cast(Prepared(fn, std::move(b), std::move(go), std::move(keep), std::move(result)));
}

bool given(const py::object& o) { return !o.is_none(); }

void def_cpu(py::module_& cpu) {
  py::class_<Prepared>(cpu, "Prepared",
                       "A call checked and ready to run (a kernel function called with "
                       "prepare=True); calling it runs it, once, and returns its result.")
      .def("__call__", &Prepared::operator())
      .def_property_readonly("result", &Prepared::result);
  py::class_<Plan>(cpu, "Plan",
                   "What the last call given this plan (plan=...) checked, so that the same call "
                   "with new grads is checked without walking its other arrays again (Note [The "
                   "plan of a run], csrc/bindings/buffers.h). The optimizer classes keep one per "
                   "steady run of a group.")
      .def(py::init<>())
      .def_property_readonly("full_checks", &Plan::full_checks,
                             "How many calls through this plan took the full check.");
  cpu.def(
      "sgd",
      [](py::object params, py::object grads, py::object momentum_buffers, int64_t step,
         double lr, double momentum, double dampening, double weight_decay, bool nesterov,
         bool maximize, bool prepare, py::object plan) {
        check_step("sgd", step);
        const bool use_buf = momentum != 0.0;
        if (use_buf && !given(momentum_buffers)) {
          throw py::value_error("sgd: momentum_buffers are required when momentum != 0");
        }
        Batch b = use_buf ? make_batch(plan, "sgd",
                                       {{"params", params},
                                        {"grads", grads},
                                        {"momentum_buffers", momentum_buffers}})
                          : make_batch(plan, "sgd", {{"params", params}, {"grads", grads}});
        const SgdHyper h{lr, momentum, dampening, weight_decay, nesterov, maximize};
        return finish("sgd", prepare, std::move(b),
                      [h, step](DType dt, const cpu::WorkView& w) { K().sgd(dt, w, h, step); },
                      {params, grads, momentum_buffers});
      },
      "params"_a, "grads"_a, "momentum_buffers"_a = py::none(), py::kw_only(), "step"_a,
      "lr"_a, "momentum"_a, "dampening"_a, "weight_decay"_a, "nesterov"_a, "maximize"_a,
      "prepare"_a = false, "plan"_a = py::none());

  cpu.def(
      "adagrad",
      [](py::object params, py::object grads, py::object state_sums, int64_t step, double lr,
         double lr_decay, double weight_decay, double eps, bool maximize, bool prepare,
         py::object plan) {
        check_step("adagrad", step);
        Batch b = make_batch(plan, "adagrad",
                             {{"params", params}, {"grads", grads}, {"state_sums", state_sums}});
        const AdagradHyper h{lr, lr_decay, weight_decay, eps, maximize};
        return finish("adagrad", prepare, std::move(b),
                      [h, step](DType dt, const cpu::WorkView& w) { K().adagrad(dt, w, h, step); },
                      {params, grads, state_sums});
      },
      "params"_a, "grads"_a, "state_sums"_a, py::kw_only(), "step"_a, "lr"_a, "lr_decay"_a,
      "weight_decay"_a, "eps"_a, "maximize"_a, "prepare"_a = false, "plan"_a = py::none());

  cpu.def(
      "adadelta",
      [](py::object params, py::object grads, py::object square_avgs, py::object acc_deltas,
         int64_t step, double lr, double rho, double eps, double weight_decay, bool maximize,
         bool prepare, py::object plan) {
        check_step("adadelta", step);
        Batch b = make_batch(plan, "adadelta",
                             {{"params", params},
                              {"grads", grads},
                              {"square_avgs", square_avgs},
                              {"acc_deltas", acc_deltas}});
        const AdadeltaHyper h{lr, rho, eps, weight_decay, maximize};
        return finish("adadelta", prepare, std::move(b),
                      [h, step](DType dt, const cpu::WorkView& w) { K().adadelta(dt, w, h, step); },
                      {params, grads, square_avgs, acc_deltas});
      },
      "params"_a, "grads"_a, "square_avgs"_a, "acc_deltas"_a, py::kw_only(), "step"_a, "lr"_a,
      "rho"_a, "eps"_a, "weight_decay"_a, "maximize"_a, "prepare"_a = false, "plan"_a = py::none());

  cpu.def(
      "rmsprop",
      [](py::object params, py::object grads, py::object square_avgs, py::object momentum_buffers,
         py::object grad_avgs, int64_t step, double lr, double alpha, double eps,
         double weight_decay, double momentum, bool centered, bool maximize, bool prepare,
         py::object plan) {
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
        Batch b = use_buf ? (centered ? make_batch(plan, "rmsprop", {p, g, sq, mb, ga})
                                      : make_batch(plan, "rmsprop", {p, g, sq, mb}))
                          : (centered ? make_batch(plan, "rmsprop", {p, g, sq, ga})
                                      : make_batch(plan, "rmsprop", {p, g, sq}));
        const RmspropHyper h{lr, alpha, eps, weight_decay, momentum, centered, maximize};
        return finish("rmsprop", prepare, std::move(b),
                      [h, step](DType dt, const cpu::WorkView& w) { K().rmsprop(dt, w, h, step); },
                      {params, grads, square_avgs, momentum_buffers, grad_avgs});
      },
      "params"_a, "grads"_a, "square_avgs"_a, "momentum_buffers"_a = py::none(),
      "grad_avgs"_a = py::none(), py::kw_only(), "step"_a, "lr"_a, "alpha"_a, "eps"_a,
      "weight_decay"_a, "momentum"_a, "centered"_a, "maximize"_a,
      "prepare"_a = false, "plan"_a = py::none());

  cpu.def(
      "adam",
      [](py::object params, py::object grads, py::object exp_avgs, py::object exp_avg_sqs,
         py::object max_exp_avg_sqs, int64_t step, double lr, Betas betas, double eps,
         double weight_decay, bool amsgrad, bool maximize, bool decoupled_weight_decay,
         bool prepare, py::object plan) {
        check_step("adam", step);
        if (amsgrad && !given(max_exp_avg_sqs)) {
          throw py::value_error("adam: max_exp_avg_sqs are required when amsgrad=True");
        }
        const ListArg p{"params", params}, g{"grads", grads}, m{"exp_avgs", exp_avgs},
            v{"exp_avg_sqs", exp_avg_sqs}, vmax{"max_exp_avg_sqs", max_exp_avg_sqs};
        Batch b = amsgrad ? make_batch(plan, "adam", {p, g, m, v, vmax})
                          : make_batch(plan, "adam", {p, g, m, v});
        const AdamHyper h{lr,      betas.first, betas.second,          eps, weight_decay,
                          amsgrad, maximize,    decoupled_weight_decay};
        return finish("adam", prepare, std::move(b),
                      [h, step](DType dt, const cpu::WorkView& w) { K().adam(dt, w, h, step); },
                      {params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs});
      },
      "params"_a, "grads"_a, "exp_avgs"_a, "exp_avg_sqs"_a, "max_exp_avg_sqs"_a = py::none(),
      py::kw_only(), "step"_a, "lr"_a, "betas"_a, "eps"_a, "weight_decay"_a, "amsgrad"_a,
      "maximize"_a, "decoupled_weight_decay"_a, "prepare"_a = false, "plan"_a = py::none());

  cpu.def(
      "nadam",
      [](py::object params, py::object grads, py::object exp_avgs, py::object exp_avg_sqs,
         int64_t step, py::object mu_product, double lr, Betas betas, double eps,
         double weight_decay, double momentum_decay, bool decoupled_weight_decay,
         bool maximize, bool prepare, py::object plan) {
        check_step("nadam", step);
        const NadamHyper h{lr,           betas.first,    betas.second,           eps,
                           weight_decay, momentum_decay, decoupled_weight_decay, maximize};
        double mu_prev = 1.0;
        if (given(mu_product)) {
          mu_prev = mu_product.cast<double>();
        } else {
          for (int64_t t = 1; t < step; ++t) mu_prev *= nadam_mu(h, t);
        }
        Batch b = make_batch(plan, "nadam",
                             {{"params", params},
                              {"grads", grads},
                              {"exp_avgs", exp_avgs},
                              {"exp_avg_sqs", exp_avg_sqs}});
        const double mu_new = mu_prev * nadam_mu(h, step);
        return finish(
            "nadam", prepare, std::move(b),
            [h, step, mu_prev](DType dt, const cpu::WorkView& w) {
              double mu = 0.0;  // the kernel's own product: the same expression as mu_new
              K().nadam(dt, w, h, step, mu_prev, &mu);
            },
            {params, grads, exp_avgs, exp_avg_sqs}, py::float_(mu_new));
      },
      "params"_a, "grads"_a, "exp_avgs"_a, "exp_avg_sqs"_a, py::kw_only(), "step"_a,
      "mu_product"_a = py::none(), "lr"_a, "betas"_a, "eps"_a, "weight_decay"_a,
      "momentum_decay"_a, "decoupled_weight_decay"_a, "maximize"_a,
      "prepare"_a = false, "plan"_a = py::none());

  cpu.def(
      "adamax",
      [](py::object params, py::object grads, py::object exp_avgs, py::object exp_infs,
         int64_t step, double lr, Betas betas, double eps, double weight_decay, bool maximize,
         bool prepare, py::object plan) {
        check_step("adamax", step);
        Batch b = make_batch(plan, "adamax",
                             {{"params", params},
                              {"grads", grads},
                              {"exp_avgs", exp_avgs},
                              {"exp_infs", exp_infs}});
        const AdamaxHyper h{lr, betas.first, betas.second, eps, weight_decay, maximize};
        return finish("adamax", prepare, std::move(b),
                      [h, step](DType dt, const cpu::WorkView& w) { K().adamax(dt, w, h, step); },
                      {params, grads, exp_avgs, exp_infs});
      },
      "params"_a, "grads"_a, "exp_avgs"_a, "exp_infs"_a, py::kw_only(), "step"_a, "lr"_a,
      "betas"_a, "eps"_a, "weight_decay"_a, "maximize"_a,
      "prepare"_a = false, "plan"_a = py::none());

  cpu.def(
      "ewa",
      [](py::object averages, py::object values, double beta, bool prepare, py::object plan) {
        Batch b = make_batch(plan, "ewa", {{"averages", averages}, {"values", values}});
        const EwaHyper h{beta};
        return finish("ewa", prepare, std::move(b),
                      [h](DType dt, const cpu::WorkView& w) { K().ewa(dt, w, h); },
                      {averages, values});
      },
      "averages"_a, "values"_a, py::kw_only(), "beta"_a,
      "prepare"_a = false, "plan"_a = py::none());

  cpu.def(
      "ewa_readout",
      [](py::object averages, py::object outs, double beta, int64_t step, bool prepare,
         py::object plan) {
        check_step("ewa_readout", step);
        // Kernel order: the written buffer first, the read-only average second.
        Batch b = make_batch(plan, "ewa_readout", {{"outs", outs}, {"averages", averages}});
        const EwaHyper h{beta};
        return finish(
            "ewa_readout", prepare, std::move(b),
            [h, step](DType dt, const cpu::WorkView& w) { K().ewa_readout(dt, w, h, step); },
            {averages, outs});
      },
      "averages"_a, "outs"_a, py::kw_only(), "beta"_a, "step"_a,
      "prepare"_a = false, "plan"_a = py::none());

  cpu.def(
      "rmw",
      [](py::object params, py::object grads, py::list states) {
        const int nbuf = 2 + static_cast<int>(states.size());
        if (nbuf > kMaxBuffers) {
          throw py::value_error("rmw: at most " + std::to_string(kMaxBuffers - 2) +
                                " state lists, got " + std::to_string(states.size()));
        }
        static const char* names[] = {"states[0]", "states[1]", "states[2]"};
        std::vector<ListArg> args{{"params", params}, {"grads", grads}};
        for (size_t k = 0; k < states.size(); ++k) args.push_back({names[k], states[k]});
        Batch b = nbuf == 2   ? Batch("rmw", {args[0], args[1]})
                  : nbuf == 3 ? Batch("rmw", {args[0], args[1], args[2]})
                  : nbuf == 4 ? Batch("rmw", {args[0], args[1], args[2], args[3]})
                              : Batch("rmw", {args[0], args[1], args[2], args[3], args[4]});
        run(b, [&](DType dt, const cpu::WorkView& w) { K().rmw(dt, w, nbuf); });
      },
      "params"_a, "grads"_a, "states"_a,
      "Benchmark ceiling: params += grads and each state += grads over the same driver, i.e. "
      "the memory traffic of an algorithm with that many state buffers.");

  cpu.def(
      "check",
      [](const std::string& fn, py::list args) {
        std::vector<std::string> names;
        const std::vector<ListArg> lists = named_lists(args, names);
        Batch(fn.c_str(), lists.data(), static_cast<int>(lists.size()));
      },
      "fn"_a, "args"_a,
      "Checks the lists of one call as fn would (args: its (name, list) pairs in the kernel's "
      "order: the first written, the second only read, the rest written), writing nothing. "
      "The CPU twin of _core.cuda.check, with which the optimizer classes check the GPU calls of "
      "a step before they make the first (NumPy calls are checked by fn(..., prepare=True)).");

  cpu.def(
      "set_num_threads",
      [](int n) {
        if (n < 0) throw py::value_error("set_num_threads: n must be >= 0, got " + std::to_string(n));
        set_thread_setting(n);
      },
      "n"_a, "Threads for the CPU kernels; 0 restores OpenMP's default (OMP_NUM_THREADS).");
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
      "name"_a);
  cpu.def("chunk_size", []() { return cpu::kChunk; });
}

py::dict build_info() {
  py::dict d;
  d["version"] = FUSEDOPT_VERSION;
#if defined(_OPENMP)
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
#if defined(FUSEDOPT_WITH_CUDA)
  d["cuda"] = true;
#else
  d["cuda"] = false;
#endif
  const cpu::IsaInfo* isas = nullptr;
  const int n = cpu::compiled_isas(&isas);
  py::list compiled, supported;
  for (int i = 0; i < n; ++i) {
    compiled.append(isas[i].name);
    if (isas[i].supported) supported.append(isas[i].name);
  }
  d["simd"] = compiled;
  d["simd_supported"] = supported;
  d["simd_active"] = cpu::active().name;
#if defined(__clang__)
  d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  d["compiler"] = std::string("gcc ") + __VERSION__;
#else
  d["compiler"] = "unknown";
#endif
  d["chunk_size"] = cpu::kChunk;
  return d;
}

// FUSEDOPT_SIMD forces an instruction set; one this build or CPU lacks is refused at import.
void apply_simd_env() {
  const char* env = std::getenv("FUSEDOPT_SIMD");
  const cpu::IsaInfo* isas = nullptr;
  const int n = cpu::compiled_isas(&isas);
  std::string compiled, supported;
  for (int i = 0; i < n; ++i) {
    compiled += (i ? ", " : "") + std::string(isas[i].name);
    if (isas[i].supported) supported += (supported.empty() ? "" : ", ") + std::string(isas[i].name);
  }
  if (supported.empty()) {
    throw std::runtime_error("fusedopt: this CPU supports none of the compiled kernel paths (" +
                             compiled + "); x86-64 builds need at least x86-64-v2");
  }
  if (env == nullptr || *env == '\0') return;
  if (!cpu::select_isa(env)) {
    throw std::runtime_error("fusedopt: FUSEDOPT_SIMD=" + std::string(env) +
                             " is not available: compiled [" + compiled +
                             "], supported by this CPU [" + supported + "]");
  }
}

}  // namespace
}  // namespace fusedopt::bindings

PYBIND11_MODULE(_core, m) {
  using namespace fusedopt::bindings;
  m.doc() = "fusedopt's compiled kernels; use fusedopt.functional or the optimizer classes.";
  apply_simd_env();
  py::module_ cpu = m.def_submodule("cpu", "Fused multi-tensor update kernels for NumPy arrays.");
  def_cpu(cpu);
#if defined(FUSEDOPT_WITH_CUDA)
  def_cuda(m);
#endif
  m.def("build_info", &build_info, "How this module was built and what it runs on.");
}
