// See checks.cuh.
#include "checks.cuh"

namespace tk {
namespace cuda {

__global__ void k_probe(int* flag) {
  *flag = 42;
}

template <class T>
__global__ void k_nonfinite(idx n, const T* __restrict__ x, int* __restrict__ bad) {
  TK_GRID_STRIDE(i, n) {
    if (!isfinite(x[i])) *bad = 1;
  }
}

__global__ void k_bad_labels(idx n, idx k, const std::int64_t* __restrict__ y, int* __restrict__ bad) {
  TK_GRID_STRIDE(i, n) {
    if (y[i] < 0 || y[i] >= k) *bad = 1;
  }
}

template <class T>
__global__ void k_add_diagonal(idx n, idx ld, T v, T* __restrict__ p) {
  TK_GRID_STRIDE(i, n) p[i * (ld + 1)] += v;
}

template <class T>
__global__ void k_axpy(idx n, T a, const T* __restrict__ x, T* __restrict__ y) {
  TK_GRID_STRIDE(i, n) y[i] += a * x[i];
}

namespace {
// A device int, zeroed, that a kernel may set; read back after the stream is synchronised.
struct Flag {
  int* d = nullptr;
  Flag() {
    TK_CUDA(cudaMalloc(&d, sizeof(int)));
    TK_CUDA(cudaMemsetAsync(d, 0, sizeof(int), cudaStreamPerThread));
  }
  ~Flag() {
    if (d) cudaFree(d);
  }
  int read() {
    int h = 0;
    TK_CUDA(cudaMemcpyAsync(&h, d, sizeof(int), cudaMemcpyDeviceToHost, cudaStreamPerThread));
    TK_CUDA(cudaStreamSynchronize(cudaStreamPerThread));
    return h;
  }
};
}  // namespace

void probe() {
  Flag f;
  k_probe<<<1, 1, 0, cudaStreamPerThread>>>(f.d);
  TK_CHECK_LAUNCH();
  if (f.read() != 42) throw Error("CUDA probe kernel did not run");
}

template <class T>
bool all_finite(const T* x, idx n) {
  Flag f;
  k_nonfinite<T><<<grid_for(n), kThreads, 0, cudaStreamPerThread>>>(n, x, f.d);
  TK_CHECK_LAUNCH();
  return f.read() == 0;
}

bool labels_in_range(const std::int64_t* y, idx n, idx k) {
  Flag f;
  k_bad_labels<<<grid_for(n), kThreads, 0, cudaStreamPerThread>>>(n, k, y, f.d);
  TK_CHECK_LAUNCH();
  return f.read() == 0;
}

template <class T>
void add_diagonal(T* p, idx n, idx ld, T v) {
  k_add_diagonal<T><<<grid_for(n), kThreads, 0, cudaStreamPerThread>>>(n, ld, v, p);
  TK_CHECK_LAUNCH();
  TK_CUDA(cudaStreamSynchronize(cudaStreamPerThread));
}

template <class T>
void axpy(idx n, T a, const T* x, T* y) {
  k_axpy<T><<<grid_for(n), kThreads, 0, cudaStreamPerThread>>>(n, a, x, y);
  TK_CHECK_LAUNCH();
  TK_CUDA(cudaStreamSynchronize(cudaStreamPerThread));
}

template bool all_finite<float>(const float*, idx);
template bool all_finite<double>(const double*, idx);
template void add_diagonal<float>(float*, idx, idx, float);
template void add_diagonal<double>(double*, idx, idx, double);
template void axpy<float>(idx, float, const float*, float*);
template void axpy<double>(idx, double, const double*, double*);

}  // namespace cuda
}  // namespace tk
