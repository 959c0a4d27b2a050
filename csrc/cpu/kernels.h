// The CPU kernels' entry points, as seen from outside the per-instruction-set builds: plain
// function pointers over a framework-free work list. Every algorithm is listed once here, once
// in kernels.cpp (which fills a table per instruction set) and once in the bindings.
#pragma once

#include <cstdint>

#include "../algorithms/adadelta.h"
#include "../algorithms/adagrad.h"
#include "../algorithms/adam.h"
#include "../algorithms/adamax.h"
#include "../algorithms/ewa.h"
#include "../algorithms/nadam.h"
#include "../algorithms/rmsprop.h"
#include "../algorithms/sgd.h"
#include "../common.h"

namespace fusedopt::cpu {

// Elements per chunk of the work list. Chunks are the unit the threads share, and their
// boundaries never depend on the thread count, so every element takes the same code path (vector
// body or tail) whatever OMP_NUM_THREADS is: that is what makes results bitwise reproducible
// across thread counts. 64Ki elements (256 KiB of fp32 per buffer) make the per-chunk overhead
// negligible while leaving hundreds of chunks to balance a 16M-element tensor over the cores.
constexpr int64_t kChunk = 1 << 16;

// Below this many elements in one call everything runs on the calling thread: opening an OpenMP
// parallel region costs a few microseconds, more than updating 32Ki elements.
constexpr int64_t kParallelMin = 1 << 15;

struct Chunk {
  int64_t tensor;  // index into the tensor list
  int64_t begin;   // first element within that tensor
  int64_t len;     // elements in this chunk
  int64_t start;   // elements of the whole list before this chunk (for balancing)
};

// A work list for one dtype: tensors (numel > 0 only) cut into chunks.
struct WorkView {
  const TensorRef* tensors;
  const Chunk* chunks;
  int64_t nchunks;
  int64_t total;    // elements over all tensors
  int max_threads;  // 0: OpenMP's default (OMP_NUM_THREADS or the core count)
};

struct KernelTable {
  const char* name;
  void (*sgd)(DType, const WorkView&, const SgdHyper&, int64_t step);
  void (*adagrad)(DType, const WorkView&, const AdagradHyper&, int64_t step);
  void (*adadelta)(DType, const WorkView&, const AdadeltaHyper&, int64_t step);
  void (*rmsprop)(DType, const WorkView&, const RmspropHyper&, int64_t step);
  void (*adam)(DType, const WorkView&, const AdamHyper&, int64_t step);
  void (*nadam)(DType, const WorkView&, const NadamHyper&, int64_t step, double mu_product_prev,
                double* mu_product_new);
  void (*adamax)(DType, const WorkView&, const AdamaxHyper&, int64_t step);
  void (*ewa)(DType, const WorkView&, const EwaHyper&);
  void (*ewa_readout)(DType, const WorkView&, const EwaHyper&, int64_t step);
  // Benchmark ceiling: reads nbuf buffers and writes all but buffer 1, with trivial math
  // (x += g), through the same driver: the bytes an algorithm of nbuf buffers must move.
  void (*rmw)(DType, const WorkView&, int nbuf);
};

// The instruction sets this build compiled, best last, and the one in use.
struct IsaInfo {
  const char* name;
  const KernelTable* table;
  bool supported;  // by this CPU
};
int compiled_isas(const IsaInfo** out);
const KernelTable& active();
// Selects an instruction set by name; returns false (and changes nothing) if it was not compiled
// or this CPU lacks it.
bool select_isa(const char* name);

}  // namespace fusedopt::cpu
