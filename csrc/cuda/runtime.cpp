// The CUDA runtime queries of kernels.h and the error helper of check.h. Plain C++ against the
// runtime API (linked statically: see CMakeLists.txt), so a machine without a driver can still
// load the module; every query reports "no driver" as an answer, never as a crash.
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

#include "check.h"
#include "kernels.h"

namespace fusedopt::cuda {

void throw_cuda_error(cudaError_t err, const char* what) {
  cudaGetLastError();  // reset a non-sticky error; a sticky one stays, and says so next time
  throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorString(err) + " (" +
                           cudaGetErrorName(err) + ", in " + what + ")");
}

int device_count(std::string* why) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    if (why) *why = std::string(cudaGetErrorString(err)) + " (" + cudaGetErrorName(err) + ")";
    return 0;
  }
  if (n == 0 && why) *why = "no CUDA device";
  return n;
}

PointerInfo pointer_info(const void* p) {
  cudaPointerAttributes a{};
  FUSEDOPT_CUDA_CHECK(cudaPointerGetAttributes(&a, p));
  switch (a.type) {
    case cudaMemoryTypeDevice: return {MemoryKind::Device, a.device};
    case cudaMemoryTypeManaged: return {MemoryKind::Managed, a.device};
    case cudaMemoryTypeHost: return {MemoryKind::Host, a.device};
    default: return {MemoryKind::Unregistered, -1};
  }
}

void stream_wait(int device, uintptr_t stream, uintptr_t other) {
  DeviceGuard guard(device);
  cudaEvent_t ev = nullptr;
  FUSEDOPT_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  // Destroying an event whose wait is still queued is allowed: its resources go when it completes.
  const cudaError_t rec = cudaEventRecord(ev, reinterpret_cast<cudaStream_t>(other));
  const cudaError_t wait =
      rec == cudaSuccess ? cudaStreamWaitEvent(reinterpret_cast<cudaStream_t>(stream), ev, 0) : rec;
  cudaEventDestroy(ev);
  check(rec, "cudaEventRecord(wait stream)");
  check(wait, "cudaStreamWaitEvent(launch stream)");
}

int runtime_version() {
  int v = 0;
  if (cudaRuntimeGetVersion(&v) != cudaSuccess) cudaGetLastError();
  return v;
}

int driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) cudaGetLastError();
  return v;
}

}  // namespace fusedopt::cuda
