// Every CUDA kernel, compiled once by nvcc (FUSEDOPT_ISA_NS=isa_cuda; see Note [One namespace per
// instruction set]). Each entry only makes the list's device current, turns run-time flags into an
// algorithm object (the *_dispatch of csrc/algorithms/, shared with the CPU) and hands it to the
// multi-tensor launcher of apply.cuh; the math is the algorithm headers' and nothing else.
#include "apply.cuh"

namespace fusedopt::cuda {
namespace {

auto runner(const DeviceList& l) {
  return [&l](const auto& algo) { launch(l, algo); };
}

}  // namespace

void sgd(const DeviceList& l, const SgdHyper& h, int64_t step) {
  DeviceGuard guard(l.device);
  sgd_dispatch(l.dtype, h, step, runner(l));
}
void adagrad(const DeviceList& l, const AdagradHyper& h, int64_t step) {
  DeviceGuard guard(l.device);
  adagrad_dispatch(l.dtype, h, step, runner(l));
}
void adadelta(const DeviceList& l, const AdadeltaHyper& h, int64_t step) {
  DeviceGuard guard(l.device);
  adadelta_dispatch(l.dtype, h, step, runner(l));
}
void rmsprop(const DeviceList& l, const RmspropHyper& h, int64_t step) {
  DeviceGuard guard(l.device);
  rmsprop_dispatch(l.dtype, h, step, runner(l));
}
void adam(const DeviceList& l, const AdamHyper& h, int64_t step) {
  DeviceGuard guard(l.device);
  adam_dispatch(l.dtype, h, step, runner(l));
}
void nadam(const DeviceList& l, const NadamHyper& h, int64_t step, double mu_product_prev,
           double* mu_product_new) {
  DeviceGuard guard(l.device);
  nadam_dispatch(l.dtype, h, step, mu_product_prev, mu_product_new, runner(l));
}
void adamax(const DeviceList& l, const AdamaxHyper& h, int64_t step) {
  DeviceGuard guard(l.device);
  adamax_dispatch(l.dtype, h, step, runner(l));
}
void ewa(const DeviceList& l, const EwaHyper& h) {
  DeviceGuard guard(l.device);
  ewa_dispatch(l.dtype, h, runner(l));
}
void ewa_readout(const DeviceList& l, const EwaHyper& h, int64_t step) {
  DeviceGuard guard(l.device);
  ewa_readout_dispatch(l.dtype, h, step, runner(l));
}

}  // namespace fusedopt::cuda
