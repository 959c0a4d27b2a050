// fusedopt._core: the only C++ that knows Python. The binders (cpu.cpp, cuda.cpp) are generic:
// every algorithm of algorithms/registry.h is reached through bind(algo, ...), checked from its
// spec, with the GIL released while its kernels run.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdlib>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "../cpu/kernels.h"
#include "bound.h"
#include "specs.h"

namespace py = pybind11;

namespace fusedopt::bindings {
void def_cpu(py::module_& m);        // cpu.cpp
void def_emulation(py::module_& m);  // cpu.cpp: _core._cuda_emulation, for the tests
void def_adafactor(py::module_& cpu);  // adafactor.cpp
#if defined(FUSEDOPT_WITH_CUDA)
void def_cuda(py::module_& m);  // cuda.cpp: the submodule _core.cuda
#endif
namespace {

// The optimizer classes' check of a param group's hyper-parameters (all of them, the signature's
// order): torch's texts, the learning rate a float or a schedule.
void check_hyper(const std::string& algo, py::tuple values, const std::string& who) {
  const SpecInfo& spec = find_spec(algo);
  if (static_cast<size_t>(values.size()) != spec.hypers.size()) {
    throw py::type_error("check_hyper: " + algo + " has " + std::to_string(spec.hypers.size()) +
                         " hyper-parameters, got " + std::to_string(values.size()) + " values");
  }
  std::vector<PyObject*> v(values.size());
  for (size_t i = 0; i < v.size(); ++i) v[i] = values[i].ptr();
  std::vector<double> h((spec.hyper_size + sizeof(double) - 1) / sizeof(double) + 1, 0.0);
  std::vector<double> numbers(spec.hypers.size() + 1, 0.0);
  const Names names(who, py::none());
  spec.parse(spec, v.data(), h.data(), numbers.data(), HyperCheck{names, true, true});
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
  m.def("specs", &specs_data,
        "Every algorithm's spec (csrc/algorithms/<algo>.h): its name, buffer lists (name, state "
        "name, role, when it is used), hyper-parameters (name, kind, default, range, torch's "
        "error text, check order, keyword-only, taken by a call), scalar state, whether it takes "
        "a step, and the sums per tensor of a reduction.");
  m.def("check_hyper", &check_hyper, py::arg("algo"), py::arg("values"), py::arg("who"),
        "Checks every hyper-parameter of `algo` (values in the order of its signature; the "
        "learning rate may be a schedule) as the optimizer classes do: torch's texts for a value "
        "out of range, '<who>: <name> must be ...' for one of the wrong type.");
  def_bound(m);
  py::module_ cpu = m.def_submodule("cpu", "Fused multi-tensor update kernels for NumPy arrays.");
  def_cpu(cpu);
  def_adafactor(cpu);
  def_emulation(m);
#if defined(FUSEDOPT_WITH_CUDA)
  def_cuda(m);
#endif
  m.def("build_info", &build_info, "How this module was built and what it runs on.");
}
