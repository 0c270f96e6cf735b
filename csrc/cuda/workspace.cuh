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

// How far a call's host code runs ahead of the GPU: once `kMarkWork` multiply-adds have been
// queued since the last mark, checkpoint() records a mark (an event) on the stream and waits for
// the mark kAhead before it, so that the work still queued when an interrupt comes is a few
// marks' worth and the call's exception follows the signal promptly.  The host waits only when
// the GPU is behind, and then the GPU still has a mark's worth queued: it never runs dry for
// it.  Calls under kMarkWork record no event at all; their checkpoints only poll.
struct Pace {
  static constexpr int kAhead = 2;
  static constexpr idx kMarkWork = idx(1) << 32;
  cudaEvent_t marks[kAhead] = {};
  int next = 0;
  idx queued = 0;  // multiply-adds queued since the last mark
  Pace() {
    for (cudaEvent_t& e : marks) TK_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  ~Pace() {
    for (cudaEvent_t e : marks)
      if (e) cudaEventDestroy(e);
  }
  Pace(const Pace&) = delete;
  Pace& operator=(const Pace&) = delete;

  void checkpoint(cudaStream_t s, idx work) {
    if (interrupted()) throw Interrupted();
    queued += work;
    if (queued < kMarkWork) return;
    queued = 0;
    await_event(marks[next]);  // recorded kAhead marks ago (or never, or by an earlier call: done)
    TK_CUDA(cudaEventRecord(marks[next], s));
    next = (next + 1) % kAhead;
  }
};

// What a call queues its work on: a stream, a cuBLAS handle bound to it, a few page-locked
// values, its pace.  Lanes are pooled process-wide and leased per call (bindings.cpp), apart
// from the networks' workspaces: a cuBLAS handle holds tens of MiB of device memory, so a
// program with thousands of networks must not own one per network.  Every call waits for its
// lane's work before giving the lane back, so work of different calls never overlaps on a
// buffer.
struct Lane {
  Stream stream_;               // first: destroyed last
  BlasHandle blas_{stream_.s};  // cuBLAS bound to the stream
  bool tf32 = false;            // the handle's math mode (TF32 for float32 products: an explicit opt-in)
  PinnedDoubles host;           // the loss sum, read back at the end of a call
  Pace pace;                    // the call's checkpoints
};

template <class T>
struct Workspace;

// Between steps of a call, after queuing about `work` multiply-adds: throws Interrupted once the
// call is interrupted, and keeps the host near the GPU (Pace).
template <class T>
void checkpoint(Workspace<T>& ws, idx work) {
  ws.lane->pace.checkpoint(ws.stream(), work);
}

template <class T>
struct Workspace {
  Lane* lane = nullptr;  // set for the duration of a call
  cudaStream_t stream() const { return lane->stream_.s; }
  cublasHandle_t blas() const { return lane->blas_.get(); }

  // Inputs staged from host memory, and results before they go back.
  DevBuf<T> theta, X, Y, V, out;
  DevBuf<T> sw;  // sample weights (N,)
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
