// HOST EMULATION of the small part of the CUDA runtime that csrc/cuda uses (see README.md
// beside this folder).  Device memory is host memory, streams are no-ops, a kernel launch
// runs its blocks at the same time, each as blockDim.x*y*z real threads (persistent, with a
// barrier for __syncthreads) and its own __shared__ arrays.  Every kernel of csrc/cuda is a
// grid-stride loop, so any grid covers the work: the launch runs a grid of at most 2 blocks
// per dimension, so that each loop's use of blockIdx and gridDim is exercised with several
// blocks, and nothing orders one block before another.  A launch configuration CUDA would
// refuse is refused here too (cudaGetLastError).  New allocations are filled with NaN bytes,
// so that reading what no kernel wrote shows up in the results.  Never used for a real build.
#pragma once
#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

using std::cos;
using std::exp;
using std::expm1;
using std::isfinite;
using std::log;
using std::log1p;
using std::sin;
using std::sqrt;
using std::tanh;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

typedef enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
  cudaErrorNotReady = 600
} cudaError_t;
typedef struct CUstream_st* cudaStream_t;
#define cudaStreamPerThread ((cudaStream_t)0x2)
#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01
typedef struct CUevent_st* cudaEvent_t;
#define cudaEventDisableTiming 0x02
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};
enum cudaMemoryType { cudaMemoryTypeUnregistered = 0, cudaMemoryTypeHost = 1, cudaMemoryTypeDevice = 2 };
struct cudaPointerAttributes {
  cudaMemoryType type;
  int device;
  void* devicePointer;
  void* hostPointer;
};
struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  int major, minor, multiProcessorCount;
};

inline cudaError_t cudaMalloc(void** p, size_t n) {
  *p = std::malloc(n);
  if (!*p) return cudaErrorMemoryAllocation;
  std::memset(*p, 0xFF, n);  // NaN in every float type
  return cudaSuccess;
}
template <class T>
inline cudaError_t cudaMalloc(T** p, size_t n) {
  return cudaMalloc(reinterpret_cast<void**>(p), n);
}
inline cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
// The stream-ordered pool: plain allocations (streams are no-ops here).
typedef struct CUmemPoolHandle_st* cudaMemPool_t;
enum cudaMemPoolAttr { cudaMemPoolAttrReleaseThreshold = 4 };
inline cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int) {
  *pool = reinterpret_cast<cudaMemPool_t>(0x1);
  return cudaSuccess;
}
inline cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t, cudaMemPoolAttr, void*) { return cudaSuccess; }
inline cudaError_t cudaMemPoolTrimTo(cudaMemPool_t, size_t) { return cudaSuccess; }
inline cudaError_t cudaMallocFromPoolAsync(void** p, size_t n, cudaMemPool_t, cudaStream_t) {
  return cudaMalloc(p, n);
}
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return cudaFree(p); }
inline cudaError_t cudaMallocHost(void** p, size_t n) { return cudaMalloc(p, n); }
template <class T>
inline cudaError_t cudaMallocHost(T** p, size_t n) {
  return cudaMalloc(reinterpret_cast<void**>(p), n);
}
inline cudaError_t cudaFreeHost(void* p) { return cudaFree(p); }
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) {
  std::memmove(d, s, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind k, cudaStream_t) {
  return cudaMemcpy(d, s, n, k);
}
inline cudaError_t cudaMemsetAsync(void* d, int v, size_t n, cudaStream_t) {
  std::memset(d, v, n);
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  *s = reinterpret_cast<cudaStream_t>(new int(0));
  return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete reinterpret_cast<int*>(s);
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
// Every call runs to completion at once: events order nothing that is not already ordered.
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) {
  *e = reinterpret_cast<cudaEvent_t>(new int(0));
  return cudaSuccess;
}
inline cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete reinterpret_cast<int*>(e);
  return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned) { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
namespace tk_emu {
inline thread_local cudaError_t last_error = cudaSuccess;
}
inline cudaError_t cudaGetLastError() {
  const cudaError_t e = tk_emu::last_error;
  tk_emu::last_error = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return tk_emu::last_error; }
// Work is done when these are asked, but every other query answers "not ready" first (and leaves
// that as the last error, as a runtime may), so that the callers' wait loops run.
namespace tk_emu {
inline cudaError_t query() {
  static thread_local bool ready = false;
  ready = !ready;
  if (ready) return cudaSuccess;
  last_error = cudaErrorNotReady;
  return cudaErrorNotReady;
}
}  // namespace tk_emu
inline cudaError_t cudaStreamQuery(cudaStream_t) { return tk_emu::query(); }
inline cudaError_t cudaEventQuery(cudaEvent_t) { return tk_emu::query(); }
inline const char* cudaGetErrorName(cudaError_t e) {
  return e == cudaErrorInvalidConfiguration ? "cudaErrorInvalidConfiguration" : "cudaErrorEmulated";
}
inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaErrorInvalidConfiguration ? "invalid configuration argument" : "emulated error";
}
inline cudaError_t cudaMemGetInfo(size_t* f, size_t* t) {
  *f = size_t(1) << 30;
  *t = size_t(1) << 31;
  return cudaSuccess;
}
inline cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
  std::memset(p, 0, sizeof *p);
  std::strcpy(p->name, "host emulation");
  p->totalGlobalMem = size_t(1) << 31;
  p->major = 9;
  p->multiProcessorCount = 1;
  return cudaSuccess;
}
inline cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}
inline cudaError_t cudaDriverGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}
inline cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* a, const void* p) {
  a->type = cudaMemoryTypeDevice;
  a->device = 0;
  a->devicePointer = const_cast<void*>(p);
  a->hostPointer = nullptr;
  return cudaSuccess;
}

namespace tk_emu {
// The blocks of one launch run at the same time, at most kMaxBlocks of them; each has its own
// copy of every __shared__ array (run.py rewrites `__shared__ T a[n];` to a slot of
// `static T a_tk_emu[kMaxBlocks][n]`) and this thread's block is slot tl_slot.
constexpr unsigned kMaxBlocks = 8;
inline thread_local unsigned tl_slot = 0;

// A barrier for the threads of one emulated block.
struct Barrier {
  std::mutex mu;
  std::condition_variable cv;
  unsigned n = 0, waiting = 0, generation = 0;
  void wait() {
    std::unique_lock<std::mutex> lock(mu);
    const unsigned gen = generation;
    if (++waiting == n) {
      waiting = 0;
      ++generation;
      cv.notify_all();
    } else {
      cv.wait(lock, [&] { return gen != generation; });
    }
  }
};
inline thread_local Barrier* tl_barrier = nullptr;

// The persistent workers of one block slot: one thread per thread of the largest block run in
// it so far.  Its threads synchronise only with each other (its barrier) and with the launching
// thread (its own mutex), never with another slot's: nothing orders one block's memory accesses
// before another's, as on a GPU, so ThreadSanitizer (TK_EMU_SANITIZE=thread) reports two
// blocks touching the same element, as well as a missing __syncthreads within a block.
class Block {
 public:
  void start(unsigned slot, dim3 grid, uint3 at, dim3 block, const std::function<void()>* f) {
    const unsigned n = block.x * block.y * block.z;
    while (workers_.size() < n) {
      const unsigned id = (unsigned)workers_.size();
      workers_.emplace_back([this, id] { loop(id); });
    }
    std::lock_guard<std::mutex> lock(mu_);
    job_ = f;
    slot_ = slot;
    grid_ = grid;
    at_ = at;
    block_ = block;
    active_ = n;
    left_ = n;
    bar_.n = n;
    ++epoch_;
    cv_.notify_all();
  }
  void wait() {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return left_ == 0; });
    job_ = nullptr;
  }
  ~Block() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      ++epoch_;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

 private:
  void loop(unsigned id) {
    unsigned seen = 0;
    for (;;) {
      const std::function<void()>* job;
      dim3 grid, block;
      uint3 at;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || epoch_ != seen; });
        if (stop_) return;
        seen = epoch_;
        if (id >= active_) continue;
        job = job_;
        tl_slot = slot_;
        grid = grid_;
        at = at_;
        block = block_;
      }
      threadIdx.x = id % block.x;
      threadIdx.y = id / block.x % block.y;
      threadIdx.z = id / (block.x * block.y);
      blockIdx = at;
      blockDim = block;
      gridDim = grid;
      tl_barrier = &bar_;
      (*job)();
      std::lock_guard<std::mutex> lock(mu_);
      if (--left_ == 0) done_cv_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  const std::function<void()>* job_ = nullptr;
  dim3 grid_, block_;
  uint3 at_;
  unsigned slot_ = 0, active_ = 0, left_ = 0, epoch_ = 0;
  bool stop_ = false;
  Barrier bar_;
};

// Runs f over a grid of at most 2 x 2 x 2 blocks of `block` threads, all at once (the
// grid-stride loops cover the work with any grid), after CUDA's checks of the configuration:
// a refused launch runs nothing and leaves the error for cudaGetLastError.  One launch at a
// time; the launch returns when every block has finished (stream order).
inline void launch(dim3 grid, dim3 block, const std::function<void()>& f) {
  const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
  const bool ok = grid.x && grid.y && grid.z && grid.x <= 2147483647u && grid.y <= 65535 && grid.z <= 65535 &&
                  threads && threads <= 1024 && block.z <= 64;
  if (!ok) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  static std::mutex one_launch;
  static Block slots[kMaxBlocks];
  std::lock_guard<std::mutex> lock(one_launch);
  const dim3 g(std::min(grid.x, 2u), std::min(grid.y, 2u), std::min(grid.z, 2u));
  const unsigned nb = g.x * g.y * g.z;
  for (unsigned b = 0; b < nb; ++b) slots[b].start(b, g, uint3{b % g.x, b / g.x % g.y, b / (g.x * g.y)}, block, &f);
  for (unsigned b = 0; b < nb; ++b) slots[b].wait();
}
}  // namespace tk_emu
inline void __syncthreads() { tk_emu::tl_barrier->wait(); }
#define TK_EMU_LAUNCH(grid, block, stream, ...) \
  ((void)(stream), tk_emu::launch(dim3(grid), dim3(block), [&] { __VA_ARGS__; }))
