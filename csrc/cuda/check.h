// Checking CUDA calls: every call of the CUDA runtime in csrc/cuda/ goes through FUSEDOPT_CUDA_CHECK,
// which turns a failure into std::runtime_error with CUDA's own text (RuntimeError in Python).
#pragma once

#include <cuda_runtime_api.h>

namespace fusedopt::cuda {

// Throws std::runtime_error("CUDA error: <cudaGetErrorString> (<cudaGetErrorName>, in <what>)"),
// after clearing a non-sticky error so that the next call starts clean.
[[noreturn]] void throw_cuda_error(cudaError_t err, const char* what);

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw_cuda_error(err, what);
}

#define FUSEDOPT_CUDA_CHECK(call) ::fusedopt::cuda::check((call), #call)

// Makes `device` current for the lifetime of the guard and restores the previous one after, so a
// call on arrays of device 1 leaves the caller's current device alone.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) : device_(device) {
    FUSEDOPT_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device_) FUSEDOPT_CUDA_CHECK(cudaSetDevice(device_));
  }
  ~DeviceGuard() {
    if (previous_ != device_) cudaSetDevice(previous_);  // nothing to report from a destructor
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int device_;
  int previous_ = 0;
};

}  // namespace fusedopt::cuda
