// Shared definitions of the CUDA kernels (taylorkern._cuda).  Mirrors ../common.hpp: the
// network description, the targets and the index letters are the C++ kernels' (../net.hpp),
// with device buffers in place of vectors.  All arrays are row-major and contiguous, on the device.
//
// Every CUDA runtime call goes through TK_CUDA, every launch is followed by TK_CHECK_LAUNCH(): a
// failure throws tk::cuda::Error (a std::runtime_error naming the call and CUDA's message),
// which the bindings turn into a Python RuntimeError.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "../interrupt.hpp"
#include "../net.hpp"  // Net, Targets, sample_weight; Act, Loss

namespace tk {
namespace cuda {

using tk::idx;
using tk::Net;
using tk::Targets;

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A device allocation that does not fit: Python's MemoryError (taylorkern._cuda.OutOfDeviceMemory).
struct OutOfDeviceMemory : Error {
  using Error::Error;
};

[[noreturn]] void fail(const char* call, cudaError_t err, const char* file, int line);

// cudaMalloc of `bytes` (at least 1); a refusal throws OutOfDeviceMemory naming the size and
// what the device has free, any other error Error.
void* device_malloc(size_t bytes);

// The same from the device's stream-ordered pool, which keeps freed blocks for the next
// allocations (cudaFreeAsync on the legacy stream): for results handed to Python, allocated
// anew by every call.  A refusal first gives the pool's idle blocks back, as device_malloc does.
void* result_malloc(size_t bytes);
void result_free(void* p) noexcept;

#define TK_CUDA(call)                                                                 \
  do {                                                                                \
    const cudaError_t tk_err_ = (call);                                               \
    if (tk_err_ != cudaSuccess) ::tk::cuda::fail(#call, tk_err_, __FILE__, __LINE__); \
  } while (0)
// After a kernel launch: configuration errors show here, faults at the next synchronisation.
#define TK_CHECK_LAUNCH() TK_CUDA(cudaGetLastError())

// Interruption (../interrupt.hpp, docs/design.md "Interruption"): the host code of a call
// checks tk::interrupted() between launches (checkpoint(), workspace.cuh) and in its waits for
// the GPU (await_done), and once it is true throws Interrupted; the bindings then raise the
// signal handler's exception (KeyboardInterrupt).  Work already queued on the stream is not
// cancelled: it finishes before the workspace and its lane go back to the pool (bindings.cpp,
// Lease), so the next call finds them as after a normal return.
struct Interrupted : Error {
  Interrupted() : Error("interrupted") {}
};

// Returns once query() -- cudaEventQuery or cudaStreamQuery of queued work -- says it is done,
// checking for an interrupt meanwhile.  The thread spins (yielding) as cudaStreamSynchronize
// does, then, once the wait is long, naps between queries instead of holding a core.
constexpr std::chrono::milliseconds kAwaitSpin{20};
constexpr std::chrono::microseconds kAwaitNap{200};
template <class Query>
void await_done(Query&& query, const char* call) {
  using clock = std::chrono::steady_clock;
  const clock::time_point start = clock::now();
  for (;;) {
    const cudaError_t err = query();
    if (err == cudaSuccess) return;
    if (err != cudaErrorNotReady) fail(call, err, __FILE__, __LINE__);
    // "not ready" is no error: not left for the next launch check to report
    if (cudaPeekAtLastError() == cudaErrorNotReady) (void)cudaGetLastError();
    if (interrupted()) throw Interrupted();
    if (clock::now() - start < kAwaitSpin)
      std::this_thread::yield();
    else
      std::this_thread::sleep_for(kAwaitNap);
  }
}
// The work queued on stream s so far, or before event e.
inline void await_stream(cudaStream_t s) {
  await_done([s] { return cudaStreamQuery(s); }, "cudaStreamQuery");
}
inline void await_event(cudaEvent_t e) {
  await_done([e] { return cudaEventQuery(e); }, "cudaEventQuery");
}

// A device buffer that only grows (contents are not kept across a growth; every kernel
// writes, or explicitly zeroes, what it reads — as the CPU workspaces).
template <class T>
class DevBuf {
 public:
  DevBuf() = default;
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  DevBuf(DevBuf&& o) noexcept : p_(std::exchange(o.p_, nullptr)), cap_(std::exchange(o.cap_, 0)), n_(o.n_) {}
  DevBuf& operator=(DevBuf&& o) noexcept {
    if (this != &o) {
      release();
      p_ = std::exchange(o.p_, nullptr);
      cap_ = std::exchange(o.cap_, 0);
      n_ = o.n_;
    }
    return *this;
  }
  ~DevBuf() { release(); }

  // Size n (elements); reallocates only to grow.  The old block may still be read by work
  // queued on a stream, so the device is synchronised before it is freed (growths are rare:
  // a workspace reaches its size on the first calls and keeps it).
  void resize(idx n) {
    if (n > cap_) {
      if (p_) {
        TK_CUDA(cudaDeviceSynchronize());
        cudaFree(p_);
        p_ = nullptr;
        cap_ = 0;
      }
      p_ = static_cast<T*>(device_malloc((size_t)n * sizeof(T)));
      cap_ = n;
    }
    n_ = n;
  }
  T* data() const { return p_; }
  idx size() const { return n_; }

 private:
  void release() noexcept {
    if (p_) cudaFree(p_);  // no throw from a destructor; at interpreter exit CUDA may be gone
    p_ = nullptr;
    cap_ = 0;
  }
  T* p_ = nullptr;
  idx cap_ = 0, n_ = 0;
};

// Launch geometry of the grid-stride loops: 256 threads, at most 2^16 blocks.
constexpr int kThreads = 256;
inline unsigned grid_for(idx n) {
  const idx b = (n + kThreads - 1) / kThreads;
  return (unsigned)std::max<idx>(1, std::min<idx>(b, idx(1) << 16));
}
#define TK_GRID_STRIDE(i, n) \
  for (idx i = (idx)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (idx)gridDim.x * blockDim.x)

// Row passes over an (rows, cols) row-major array, with optional column sums (the bias terms
// of gradients and products).  A block of (tx, ty) threads owns tx consecutive columns, one
// per thread, and walks a chunk of rows in steps of ty: no index division per value, each
// column's offset and its per-column constants loaded once per thread.  The column sums are
// written per chunk (`partial`, chunks x cols) and added up in chunk order by colsum_finish:
// deterministic.  The loops stride over column tiles and chunks, so any grid covers the array;
// tile_grid() gives one block per (tile, chunk).  The device side is in tile.cuh.
struct Tile {
  idx rows = 0, cols = 0, chunk_rows = 0, chunks = 0, col_tiles = 0;
  int tx = 0, ty = 0;
};
inline Tile make_tile(idx rows, idx cols, idx rows_per_thread = 32) {
  Tile t;
  t.rows = rows;
  t.cols = cols;
  t.tx = (int)std::min<idx>(kThreads, (cols + 31) / 32 * 32);
  t.ty = kThreads / t.tx;
  t.chunk_rows = rows_per_thread * t.ty;
  t.chunks = std::max<idx>(1, (rows + t.chunk_rows - 1) / t.chunk_rows);
  t.col_tiles = (cols + t.tx - 1) / t.tx;
  return t;
}
inline dim3 tile_grid(const Tile& t) {
  return dim3((unsigned)std::min<idx>(t.col_tiles, idx(1) << 16), (unsigned)std::min<idx>(t.chunks, 65535));
}
inline dim3 tile_block(const Tile& t) {
  return dim3((unsigned)t.tx, (unsigned)t.ty);
}

// Per-call scratch of every kernel family, pooled per network (workspace.cuh).
template <class T>
struct Workspace;

}  // namespace cuda
}  // namespace tk
