// See transfer.hpp.
#include "transfer.hpp"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

namespace tk {
namespace cuda {
namespace {

constexpr size_t kChunk = size_t(32) << 20;    // bytes per staged chunk
constexpr size_t kStagedMin = size_t(64) << 20;  // smaller copies: one plain cudaMemcpyAsync
constexpr size_t kPerThreadMin = size_t(4) << 20;

// Two page-locked chunks and their "copied in" events, made on first use and kept for the
// process (one set: large copies are serialised, they are bound by the host's memory anyway).
struct Staging {
  std::mutex mu;
  void* buf[2] = {nullptr, nullptr};
  cudaEvent_t filled[2] = {nullptr, nullptr};

  bool failed = false;  // page-locked memory refused: copies go the plain way

  // Whether the staging buffers are there (made on first use).
  bool ready() {
    for (int i = 0; i < 2 && !failed; ++i) {
      if (!buf[i] && cudaMallocHost(&buf[i], kChunk) != cudaSuccess) failed = true;
      if (!failed && !filled[i] && cudaEventCreateWithFlags(&filled[i], cudaEventDisableTiming) != cudaSuccess)
        failed = true;
    }
    if (failed) (void)cudaGetLastError();  // not an error of this call: it copies without staging
    return !failed;
  }
  ~Staging() {  // at interpreter exit the runtime may be gone: errors are ignored
    for (int i = 0; i < 2; ++i) {
      if (filled[i]) cudaEventDestroy(filled[i]);
      if (buf[i]) cudaFreeHost(buf[i]);
    }
  }
};

Staging& staging() {
  static Staging s;
  return s;
}

// memcpy split over up to `threads` threads (the caller's included).
void parallel_copy(char* dst, const char* src, size_t bytes, unsigned threads) {
  threads = (unsigned)std::max<size_t>(1, std::min<size_t>(threads, bytes / kPerThreadMin));
  const size_t part = (bytes + threads - 1) / threads;
  std::vector<std::thread> pool;
  for (unsigned i = 1; i < threads; ++i) {
    const size_t b = std::min(bytes, i * part), e = std::min(bytes, b + part);
    if (b < e) pool.emplace_back([=] { std::memcpy(dst + b, src + b, e - b); });
  }
  std::memcpy(dst, src, std::min(bytes, part));
  for (auto& t : pool) t.join();
}

// Chunks through the two staging buffers (copy_to_host).
void staged_copy(Staging& st, void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  const unsigned threads = std::max(1u, std::min(8u, std::thread::hardware_concurrency() / 2));
  const size_t chunks = (bytes + kChunk - 1) / kChunk;
  auto* out = static_cast<char*>(dst);
  const auto* in = static_cast<const char*>(src);
  auto issue = [&](size_t c) {
    const size_t off = c * kChunk, len = std::min(kChunk, bytes - off);
    TK_CUDA(cudaMemcpyAsync(st.buf[c % 2], in + off, len, cudaMemcpyDeviceToHost, stream));
    TK_CUDA(cudaEventRecord(st.filled[c % 2], stream));
  };
  issue(0);
  if (chunks > 1) issue(1);
  for (size_t c = 0; c < chunks; ++c) {
    const size_t off = c * kChunk, len = std::min(kChunk, bytes - off);
    await_event(st.filled[c % 2]);
    parallel_copy(out + off, static_cast<const char*>(st.buf[c % 2]), len, threads);
    if (c + 2 < chunks) issue(c + 2);  // into the buffer just emptied
  }
}

}  // namespace

// A copy into pageable memory returns only once it is done, and starts only after the stream's
// work: that work is awaited first, so that the wait can be interrupted.
static void plain_copy(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  await_stream(stream);
  TK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream));
  TK_CUDA(cudaStreamSynchronize(stream));
}

void copy_to_host(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  if (bytes < kStagedMin) return plain_copy(dst, src, bytes, stream);
  Staging& st = staging();
  std::lock_guard<std::mutex> lock(st.mu);
  if (!st.ready()) return plain_copy(dst, src, bytes, stream);
  try {
    staged_copy(st, dst, src, bytes, stream);
  } catch (const Interrupted&) {
    // the copies into the staging buffers already queued land before another call reuses them
    (void)cudaStreamSynchronize(stream);
    throw;
  }
}

void copy_to_device(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  for (size_t off = 0; off < bytes; off += kChunk) {
    if (off > 0 && interrupted()) throw Interrupted();
    TK_CUDA(cudaMemcpyAsync(static_cast<char*>(dst) + off, static_cast<const char*>(src) + off,
                            std::min(kChunk, bytes - off), cudaMemcpyHostToDevice, stream));
  }
}

}  // namespace cuda
}  // namespace tk
