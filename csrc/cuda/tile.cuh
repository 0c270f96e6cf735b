// The device side of the row passes of common.cuh (Tile): loops and the column sums.
// Included by kernel sources only.
#pragma once
#include "common.cuh"

namespace tk {
namespace cuda {

// TK_TILES(tl, j, ch) { body }: the body runs once per (column tile, chunk) of this block,
// with j this thread's column (possibly >= cols: guard the values, never a barrier) and ch
// the chunk; TK_TILE_ROWS(tl, ch, n) then walks this thread's rows of the chunk.
#define TK_TILES(tl, j, ch)                                                   \
  for (idx tk_ct_ = blockIdx.x; tk_ct_ < (tl).col_tiles; tk_ct_ += gridDim.x) \
    for (idx ch = blockIdx.y, j = tk_ct_ * blockDim.x + threadIdx.x; ch < (tl).chunks; ch += gridDim.y)
#define TK_TILE_ROWS(tl, ch, n)                                                                           \
  for (idx n = (ch) * (tl).chunk_rows + threadIdx.y,                                                      \
           tk_end_ = ((ch) + 1) * (tl).chunk_rows < (tl).rows ? ((ch) + 1) * (tl).chunk_rows : (tl).rows; \
       n < tk_end_; n += blockDim.y)

// Stores this thread's sum over its rows of chunk ch, added over the block's ty threads of
// its column (in threadIdx.y order), to partial[(ch * cols + j) * stride + offset].  Every
// thread of the block calls it (it synchronises); acc of a column j >= cols is ignored.
template <class T>
__device__ __forceinline__ void tile_colsum_store(const Tile& tl, idx ch, idx j, T acc, T* __restrict__ partial,
                                                  idx stride = 1, idx offset = 0) {
  const idx at = (ch * tl.cols + j) * stride + offset;
  if (blockDim.y == 1) {
    if (j < tl.cols) partial[at] = acc;
    return;
  }
  __shared__ double sh[kThreads];
  sh[threadIdx.y * blockDim.x + threadIdx.x] = (double)acc;
  __syncthreads();
  if (threadIdx.y == 0 && j < tl.cols) {
    double s = 0;
    for (unsigned y = 0; y < blockDim.y; ++y) s += sh[y * blockDim.x + threadIdx.x];
    partial[at] = (T)s;
  }
  __syncthreads();
}

// What a backward row pass reads as e[n, j], the value backpropagated into column j of a
// layer's input.  Stored: written before (by a cuBLAS product).  Narrow: formed in the pass
// from a layer of k <= KW outputs, sum_c g1[n, c] W1[j, c] (+ g2[n, c] W2[j, c]), with the
// rows of W1 (and W2) in registers: the product with a narrow layer (the output layer of a
// classifier or regressor) reads g's few values per row and writes nothing of its own.
// Call at_column(j) for a column j < cols before reading it.
template <class T>
struct Stored {
  const T* e;
  idx ld;
  __device__ __forceinline__ void at_column(idx) {}
  __device__ __forceinline__ T operator()(idx n, idx j) const { return e[n * ld + j]; }
};

template <class T, int KW>
struct Narrow {
  const T *g1, *W1, *g2, *W2;  // g2, W2 may be null
  idx k;
  T w1[KW], w2[KW];
  __device__ __forceinline__ void at_column(idx j) {
#pragma unroll
    for (int c = 0; c < KW; ++c) {
      w1[c] = c < k ? W1[j * k + c] : T(0);
      w2[c] = c < k && g2 ? W2[j * k + c] : T(0);
    }
  }
  __device__ __forceinline__ T operator()(idx n, idx) const {
    T s = 0;
#pragma unroll
    for (int c = 0; c < KW; ++c)
      if (c < k) s += g1[n * k + c] * w1[c];
    if (g2) {
#pragma unroll
      for (int c = 0; c < KW; ++c)
        if (c < k) s += g2[n * k + c] * w2[c];
    }
    return s;
  }
};

// launch(src) with the source of layer l's backward pass: Narrow when that layer has at most
// kNarrow outputs (and narrow_products() is on), reading g1, W1 (g2, W2); else Stored (e, ld).
template <class T, class Launch>
void with_source(bool narrow, const T* e, idx ld, const T* g1, const T* W1, const T* g2, const T* W2, idx k,
                 Launch&& launch) {
  if (!narrow)
    launch(Stored<T>{e, ld});
  else if (k == 1)
    launch(Narrow<T, 1>{g1, W1, g2, W2, k, {}, {}});
  else if (k <= 4)
    launch(Narrow<T, 4>{g1, W1, g2, W2, k, {}, {}});
  else
    launch(Narrow<T, kNarrow>{g1, W1, g2, W2, k, {}, {}});
}

}  // namespace cuda
}  // namespace tk
