// The reusable device scratch of every kernel (mirrors ../workspace.hpp): one per concurrent
// call on a network, pooled by the bindings, so that an optimizer's iterations allocate
// nothing.  A call's work is queued on the Lane it leases.  Buffers only grow.
#pragma once
#include "blas.hpp"
#include "common.cuh"
#include "curvature.cuh"
#include "forward_backward.cuh"

namespace tk {
namespace cuda {

// A blocking stream: ordered after work on the legacy default stream (where CuPy and PyTorch
// put theirs by default), so device inputs written there are complete before we read them.
struct Stream {
  cudaStream_t s = nullptr;
  Stream() { TK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamDefault)); }
  ~Stream() {
    if (s) cudaStreamDestroy(s);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
};

// A few values of page-locked host memory: device-to-host copies into it are asynchronous.
struct PinnedDoubles {
  double* p = nullptr;
  PinnedDoubles() { TK_CUDA(cudaMallocHost(&p, 4 * sizeof(double))); }
  ~PinnedDoubles() {
    if (p) cudaFreeHost(p);
  }
  PinnedDoubles(const PinnedDoubles&) = delete;
  PinnedDoubles& operator=(const PinnedDoubles&) = delete;
};

// What a call queues its work on: a stream, a cuBLAS handle bound to it, a few page-locked
// values.  Lanes are pooled process-wide and leased per call (bindings.cpp), apart from the
// networks' workspaces: a cuBLAS handle holds tens of MiB of device memory, so a program with
// thousands of networks must not own one per network.  Every call waits for its lane's work
// before giving the lane back, so work of different calls never overlaps on a buffer.
struct Lane {
  Stream stream_;               // first: destroyed last
  BlasHandle blas_{stream_.s};  // cuBLAS bound to the stream
  bool tf32 = false;            // the handle's math mode (TF32 for float32 products: an explicit opt-in)
  PinnedDoubles host;           // the loss sum, read back at the end of a call
};

template <class T>
struct Workspace {
  Lane* lane = nullptr;  // set for the duration of a call
  cudaStream_t stream() const { return lane->stream_.s; }
  cublasHandle_t blas() const { return lane->blas_.get(); }

  // Inputs staged from host memory, and results before they go back.
  DevBuf<T> theta, X, Y, V, out;
  DevBuf<std::int64_t> labels;
  DevBuf<T> part;  // per-chunk column sums of a tiled pass (common.cuh, Tile)

  Tape<T> tape;                            // forward/backward quantities of all samples
  std::vector<DevBuf<T>> Vt, Vtt, Rz, Ra;  // rop: transposed slices of V, tangents
  std::vector<DevBuf<T>> U, A;             // rows backpropagated per sample; augmented inputs
  DevBuf<T> Rg, Re, tmp, acc, Lf, Rf, Asq, q;
  Factors<T> f;                    // per-chunk curvature factors
  std::vector<DevBuf<T>> Kd, E3a;  // Kronecker sums over samples, per block
  std::vector<std::vector<DevBuf<T>>> Ko, E3;
};

}  // namespace cuda
}  // namespace tk
