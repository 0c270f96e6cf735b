// Fixed-width vectors of values (GCC/Clang vector extensions) whatever the build's target:
// Vec<T, n>::type holds n values of T with the lane-wise operators of a vector, as one vector
// where the target has registers that wide (x86-64-v4: 64 bytes), else as a row of the
// target's own vectors (VectorRow).  The tiny networks' lanes (lanes.hpp) and the small
// products' register blocks (blas.cpp) use it.
//
// Why the row: GCC keeps a vector type wider than the target's registers whole in memory
// between operations, so that each result goes to the stack and is read back in pieces -- for
// doubles under AVX2 a 32-byte store read back as 8- and 16-byte loads, which store-to-load
// forwarding does not serve.  The x86-64-v3 build ran the tiny networks slower than the
// baseline build that way (bench/RESULTS.md).  A row of native vectors stays in registers, and
// computes the same values: the operations are lane-wise.
#pragma once
#include <cstdint>
#include <cstring>

namespace tk {

// The widest vector registers of the build's target, in bytes.
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#elif defined(__AVX__)
constexpr int kVectorBytes = 32;
#else
constexpr int kVectorBytes = 16;
#endif

// n values of T as a row of `bytes`-wide vectors, with the lane-wise operators of a vector;
// element alignment, as Vec's single vector.
template <class T, int n, int bytes>
struct VectorRow {
  static constexpr int kPieces = int(n * sizeof(T)) / bytes;
  typedef T piece __attribute__((vector_size(bytes), aligned(alignof(T))));
  piece v[kPieces];

  T& operator[](std::int64_t b) { return reinterpret_cast<T*>(v)[b]; }  // a vector aliases its elements
  T operator[](std::int64_t b) const { return reinterpret_cast<const T*>(v)[b]; }

  // f(piece, ...) for each piece of the arguments (rows, or scalars passed on as they are).
  // f takes its arguments by value: deduced from a piece, `auto` loses the piece's element
  // alignment (GCC drops a typedef's attributes there), so an `auto&` would claim more.
  template <class F, class... A>
  static VectorRow map(F&& f, const A&... a) {
    VectorRow r;
    for (int i = 0; i < kPieces; ++i) r.v[i] = f(part(a, i)...);
    return r;
  }
  static const piece& part(const VectorRow& a, int i) { return a.v[i]; }
  static T part(T a, int) { return a; }

#define TK_VECTOR_ROW_OP(op)                                                 \
  friend VectorRow operator op(const VectorRow& a, const VectorRow& b) {     \
    return map([](auto x, auto y) { return x op y; }, a, b);   \
  }                                                                          \
  friend VectorRow operator op(const VectorRow& a, T b) {                    \
    return map([](auto x, auto y) { return x op y; }, a, b);   \
  }                                                                          \
  friend VectorRow operator op(T a, const VectorRow& b) {                    \
    return map([](auto x, auto y) { return x op y; }, a, b);   \
  }                                                                          \
  template <class B>                                                         \
  VectorRow& operator op##=(const B& b) {                                    \
    return *this = *this op b;                                               \
  }
  TK_VECTOR_ROW_OP(+)
  TK_VECTOR_ROW_OP(-)
  TK_VECTOR_ROW_OP(*)
  TK_VECTOR_ROW_OP(/)
#undef TK_VECTOR_ROW_OP
};

template <class T, int n, bool one_vector = n * sizeof(T) <= kVectorBytes>
struct Vec {
  typedef T type __attribute__((vector_size(n * sizeof(T)), aligned(alignof(T))));
};
template <class T, int n>
struct Vec<T, n, false> {
  using type = VectorRow<T, n, kVectorBytes>;
};

template <class V>
constexpr bool kIsVectorRow = false;
template <class T, int n, int bytes>
constexpr bool kIsVectorRow<VectorRow<T, n, bytes>> = true;

// The values of a V (either form of Vec<T, n>::type) from p, and into p, at any alignment.  A
// row a piece at a time, by the piece's type (which needs only T's alignment): memcpy of 32
// bytes or more is expanded in 16-byte moves through the stack where the target is tuned for
// that (generic).  A single vector by memcpy: as a template argument V loses its element
// alignment (GCC drops a typedef's attributes there), so a V* access could assume more.
template <class V, class T>
V vec_load(const T* p) {
  V v;
  if constexpr (kIsVectorRow<V>) {
    using piece = typename V::piece;
    for (int i = 0; i < V::kPieces; ++i) v.v[i] = reinterpret_cast<const piece*>(p)[i];
  } else {
    std::memcpy(&v, p, sizeof v);
  }
  return v;
}
template <class V, class T>
void vec_store(T* p, V v) {  // by value, as where_greater's arguments (below)
  if constexpr (kIsVectorRow<V>) {
    using piece = typename V::piece;
    for (int i = 0; i < V::kPieces; ++i) reinterpret_cast<piece*>(p)[i] = v.v[i];
  } else {
    std::memcpy(p, &v, sizeof v);
  }
}

// Lane-wise a > b ? x : y, for either form of Vec<T, n>::type.
template <class T, int n, int bytes>
VectorRow<T, n, bytes> where_greater(const VectorRow<T, n, bytes>& a, const VectorRow<T, n, bytes>& b,
                                     const VectorRow<T, n, bytes>& x, const VectorRow<T, n, bytes>& y) {
  return VectorRow<T, n, bytes>::map([](auto p, auto q, auto r, auto s) { return p > q ? r : s; },
                                     a, b, x, y);
}
template <class V>  // by value: a reference to V could assume more than the element alignment (above)
V where_greater(V a, V b, V x, V y) {
  return a > b ? x : y;
}

}  // namespace tk
