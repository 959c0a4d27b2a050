// The CUDA runtime queries of kernels.h and the error helper of check.h. Plain C++ against the
// runtime API (linked statically: see CMakeLists.txt), so a machine without a driver can still
// load the module; every query reports "no driver" as an answer, never as a crash.
#include <cuda.h>  // types only: the driver is reached through the runtime's entry-point query
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

namespace {

using AddressRangeFn = CUresult (*)(CUdeviceptr* base, size_t* size, CUdeviceptr p);

// cuMemGetAddressRange (v2, CUDA >= 3.2), looked up once; null where the driver lacks it.
AddressRangeFn address_range_fn() {
  static const AddressRangeFn fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
#if CUDART_VERSION >= 12050
    const cudaError_t err =
        cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &f, 3020, cudaEnableDefault, &found);
#else
    const cudaError_t err = cudaGetDriverEntryPoint("cuMemGetAddressRange", &f, cudaEnableDefault, &found);
#endif
    if (err != cudaSuccess || found != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      return static_cast<AddressRangeFn>(nullptr);
    }
    return reinterpret_cast<AddressRangeFn>(f);
  }();
  return fn;
}

}  // namespace

bool allocation_range(const void* p, uintptr_t* base, size_t* size) {
  const AddressRangeFn fn = address_range_fn();
  if (fn == nullptr) return false;
  CUdeviceptr b = 0;
  size_t n = 0;
  if (fn(&b, &n, reinterpret_cast<CUdeviceptr>(p)) != CUDA_SUCCESS) return false;
  *base = static_cast<uintptr_t>(b);
  *size = n;
  return true;
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

Scratch::Scratch(int device, uintptr_t stream, size_t bytes) : device_(device), stream_(stream) {
  DeviceGuard guard(device);
  FUSEDOPT_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, reinterpret_cast<cudaStream_t>(stream)));
}

Scratch::~Scratch() {
  if (ptr_ == nullptr) return;
  int previous = 0;  // nothing to report from a destructor
  cudaGetDevice(&previous);
  if (previous != device_) cudaSetDevice(device_);
  cudaFreeAsync(ptr_, reinterpret_cast<cudaStream_t>(stream_));
  if (previous != device_) cudaSetDevice(previous);
}

void zero_async(int device, uintptr_t stream, void* p, size_t bytes) {
  DeviceGuard guard(device);
  FUSEDOPT_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, reinterpret_cast<cudaStream_t>(stream)));
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
