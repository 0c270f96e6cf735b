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

}  // namespace cuda
}  // namespace tk
