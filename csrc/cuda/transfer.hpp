// Copies between the device and pageable host memory (numpy arrays): large results back,
// inputs in, each interruptible between its pieces.
//
// A plain cudaMemcpy into pageable memory is staged by the driver through its own page-locked
// buffers and written to the destination by one thread; into a freshly allocated numpy array
// that thread also takes every page fault, so a full Hessian of 20k parameters (3.5 GB) comes
// back slowly (bench/GPU_NOTES.md).  copy_to_host stages large copies itself: chunks into two
// page-locked buffers, the copy of chunk c+1 overlapping the host-side copy of chunk c, which
// several threads share.
#pragma once
#include <cstddef>

#include "common.cuh"

namespace tk {
namespace cuda {

// Copies `bytes` from device memory `src` to host memory `dst` after the work queued on
// `stream`, and returns when `dst` holds it (the stream's earlier work is then done too).
// Its waits check for an interrupt (common.cuh, await_done): Interrupted leaves dst partial.
void copy_to_host(void* dst, const void* src, size_t bytes, cudaStream_t stream);

// Queues the copy of `bytes` of host memory `src` (pageable: each piece is staged by the driver
// before the call returns) to device memory `dst` on `stream`, in pieces with a check for an
// interrupt between them.
void copy_to_device(void* dst, const void* src, size_t bytes, cudaStream_t stream);

}  // namespace cuda
}  // namespace tk
