// CSR sparse-matrix kernels for sparse_rl (forward, grad to input, grad to values, bias), called through ctypes.
//
// Layout: the weight W is [rows, cols] in CSR (values, column indices of type I, int32 row pointers). Activations are
// turned "chunked feature-major" (see to_chunked_blocks) so that every stored weight multiplies a contiguous run of
// batch entries; chunks of up to 8 SIMD registers are accumulated in registers per output row, and results go back to
// batch-major through in-register block transposes. Threads split rows (or columns) balanced by their nonzeros.
//
// Interface (the ABI, at the end of this file): two entry points, srl_forward and srl_backward, each taking one
// struct of named fields (srl_forward_args, srl_backward_args; the matrix is an srl_csr). The structs are declared
// once below through field lists and mirrored once in Python (sparse_rl/nn/backends/_abi.py); srl_abi_version and
// srl_abi_layout (every struct's size and field offsets, as text) let Python refuse a library that does not match.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>
#if defined(__AVX__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#else
static inline int omp_get_thread_num() { return 0; }
static inline int omp_get_num_threads() { return 1; }
#endif

namespace {

constexpr int64_t kParallelWork = 1 << 18;  // (nnz + rows + cols) * batch below which a call stays single-threaded
constexpr int64_t kL1Bytes = 24 << 10;       // chunk of the input above which column blocks are used (beyond L1)
constexpr int32_t kAhead = 8;               // entries ahead whose input rows are prefetched
constexpr int64_t kTileBytes = 128 << 10;    // partial sums of one row group in a column-blocked chunk (half of L2)

typedef float vf __attribute__((vector_size(32), aligned(4)));
typedef double vd __attribute__((vector_size(32), aligned(8)));
template <typename T> struct Simd;
template <> struct Simd<float> { typedef vf type; static constexpr int L = 8; };
template <> struct Simd<double> { typedef vd type; static constexpr int L = 4; };

inline int threads_for(int nt, int64_t work) { return (nt > 1 && work >= kParallelWork) ? nt : 1; }

// Boundary t of nt parts of [0, n) balanced by the prefix counts ptr (ptr[0] == 0) plus one unit per row.
inline int64_t split(const int32_t* ptr, int64_t n, int t, int nt) {
  if (t <= 0) return 0;
  if (t >= nt) return n;
  const int64_t target = ((int64_t)ptr[n] + n) * t / nt;
  int64_t lo = 0, hi = n;
  while (lo < hi) {  // first i with ptr[i] + i >= target
    const int64_t mid = (lo + hi) / 2;
    if ((int64_t)ptr[mid] + mid < target) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// Width of the next batch chunk given `rem` remaining columns: 8, 4, 2 or 1 SIMD registers, then 4, 2, 1 scalars.
template <typename T>
inline int64_t chunk_width(int64_t rem) {
  constexpr int64_t L = Simd<T>::L;
  if (rem >= 8 * L) return 8 * L;
  if (rem >= 4 * L) return 4 * L;
  if (rem >= 2 * L) return 2 * L;
  if (rem >= L) return L;
  return rem >= 4 ? 4 : (rem >= 2 ? 2 : 1);
}

template <int N>
using Int = std::integral_constant<int, N>;

// The one width dispatch, for the widths chunk_width produces: vec(Int<NV>{}) for a chunk of NV * L batch columns
// (NV = 8, 4, 2, 1), narrow(Int<W>{}) for a chunk of W < L columns (W = 4, 2, 1).
template <typename T, typename Vec, typename Narrow>
inline void dispatch_width(int64_t w, Vec&& vec, Narrow&& narrow) {
  constexpr int64_t L = Simd<T>::L;
  if (w == 8 * L) vec(Int<8>{});
  else if (w == 4 * L) vec(Int<4>{});
  else if (w == 2 * L) vec(Int<2>{});
  else if (w == L) vec(Int<1>{});
  else if (w == 4) narrow(Int<4>{});
  else if (w == 2) narrow(Int<2>{});
  else narrow(Int<1>{});
}

// dst[i * ldd + j] = src[j * lds + i] for an L x L block (L = SIMD width): in-register transposes when AVX is on.
template <typename T>
inline void block_transpose(const T* src, int64_t lds, T* dst, int64_t ldd) {
  constexpr int L = Simd<T>::L;
  for (int i = 0; i < L; ++i)
    for (int j = 0; j < L; ++j) dst[i * ldd + j] = src[j * lds + i];
}
#if defined(__AVX__)
template <>
inline void block_transpose<float>(const float* s, int64_t ls, float* d, int64_t ld) {
  const __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + ls), r2 = _mm256_loadu_ps(s + 2 * ls),
               r3 = _mm256_loadu_ps(s + 3 * ls), r4 = _mm256_loadu_ps(s + 4 * ls), r5 = _mm256_loadu_ps(s + 5 * ls),
               r6 = _mm256_loadu_ps(s + 6 * ls), r7 = _mm256_loadu_ps(s + 7 * ls);
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
               t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
               t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
               u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
               u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
               u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_storeu_ps(d + ld, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_storeu_ps(d + 2 * ld, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_storeu_ps(d + 3 * ld, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_storeu_ps(d + 4 * ld, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_storeu_ps(d + 5 * ld, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_storeu_ps(d + 6 * ld, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_storeu_ps(d + 7 * ld, _mm256_permute2f128_ps(u3, u7, 0x31));
}
template <>
inline void block_transpose<double>(const double* s, int64_t ls, double* d, int64_t ld) {
  const __m256d r0 = _mm256_loadu_pd(s), r1 = _mm256_loadu_pd(s + ls), r2 = _mm256_loadu_pd(s + 2 * ls),
                r3 = _mm256_loadu_pd(s + 3 * ls);
  const __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1), t2 = _mm256_unpacklo_pd(r2, r3),
                t3 = _mm256_unpackhi_pd(r2, r3);
  _mm256_storeu_pd(d, _mm256_permute2f128_pd(t0, t2, 0x20));
  _mm256_storeu_pd(d + ld, _mm256_permute2f128_pd(t1, t3, 0x20));
  _mm256_storeu_pd(d + 2 * ld, _mm256_permute2f128_pd(t0, t2, 0x31));
  _mm256_storeu_pd(d + 3 * ld, _mm256_permute2f128_pd(t1, t3, 0x31));
}
#endif

// Prefetch the W-wide input row that entry k + kAhead will read (rows are visited in random order, which the hardware
// prefetchers cannot predict), when that entry belongs to the same row range (< e).
template <int W, typename T, typename I>
inline void prefetch_ahead(const T* xc, const I* idx, int32_t k, int32_t e) {
  if (k + kAhead < e) {
    const char* p = reinterpret_cast<const char*>(xc + (int64_t)idx[k + kAhead] * W);
#pragma GCC unroll 8
    for (int off = 0; off < W * (int)sizeof(T); off += 64) __builtin_prefetch(p + off);
  }
}

// Chunked feature-major layout of a [B, n] activation: the batch is cut into chunks (b0, w) by chunk_width and
// element (b, j) of chunk (b0, w) lives at dst[b0 * n + j * w + (b - b0)], so each chunk is one contiguous block.
template <typename T>
void to_chunked_blocks(const T* src, int64_t B, int64_t n, int64_t sb, int64_t sj, T* dst, int64_t jb0, int64_t jb1) {
  constexpr int64_t TS = 32, L = Simd<T>::L;
  for (int64_t jb = jb0; jb < jb1; ++jb) {
    const int64_t j0 = jb * TS, j1 = std::min(n, j0 + TS);
    for (int64_t b0 = 0, w; b0 < B; b0 += w) {
      w = chunk_width<T>(B - b0);
      T* d = dst + b0 * n;
      if (sj == 1 && w >= L && j1 - j0 == TS) {  // whole L x L blocks (w is then a multiple of L)
        for (int64_t j = j0; j < j1; j += L)
          for (int64_t b = 0; b < w; b += L) block_transpose<T>(src + (b0 + b) * sb + j, sb, d + j * w + b, w);
        continue;
      }
      for (int64_t b = 0; b < w; ++b) {  // rows of src read contiguously (strided reads thrash one cache set)
        const T* sp = src + (b0 + b) * sb;
        for (int64_t j = j0; j < j1; ++j) d[j * w + b] = sp[j * sj];
      }
    }
  }
}

// acc[v] += sum_{k <= j < e} vals[j] * xc[idx[j] * W + v * L ...]: one row's entries over a chunk of W = NV * L.
template <typename T, typename I, int NV>
inline void accumulate_row(typename Simd<T>::type* acc, const T* xc, const T* vals, const I* idx, int32_t k,
                           int32_t e) {
  typedef typename Simd<T>::type V;
  constexpr int L = Simd<T>::L, W = NV * L;
  for (; k < e; ++k) {
    const T w = vals[k];
    const T* xp = xc + (int64_t)idx[k] * W;
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[v] += w * *reinterpret_cast<const V*>(xp + v * L);  // V allows unaligned
  }
}

// y[b * ldy + r] = bias[r] + sum_k vals[k] * xc[idx[k] * W + b] for b < W = NV * L, rows r0..r1 (one chunk); row r
// holds entries s0[r] <= k < s1[r] (s0 = ptr, s1 = ptr + 1 for a whole CSR matrix).
template <typename T, typename I, int NV>
void chunk_vec(const T* xc, const T* vals, const I* idx, const int32_t* s0, const int32_t* s1, int64_t r0, int64_t r1,
               const T* bias, T* y, int64_t ldy) {
  typedef typename Simd<T>::type V;
  constexpr int L = Simd<T>::L, W = NV * L, G = 64 / sizeof(T);  // G rows fill one cache line of y
  alignas(64) T tile[G * W];  // [G rows][W batch]: staged so y is written whole cache lines at a time
  for (int64_t rb = r0; rb < r1; rb += G) {
    const int64_t re = std::min(r1, rb + G);
    for (int64_t r = rb; r < re; ++r) {
      V acc[NV];
      const T bv = bias ? bias[r] : T(0);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[v] = V{} + bv;
      accumulate_row<T, I, NV>(acc, xc, vals, idx, s0[r], s1[r]);
      V* tp = reinterpret_cast<V*>(tile + (r - rb) * W);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) tp[v] = acc[v];
    }
    if (re - rb == G) {
      for (int v = 0; v < NV; ++v)
        for (int h = 0; h < G; h += L) block_transpose<T>(tile + h * W + v * L, W, y + v * L * ldy + rb + h, ldy);
    } else {
      for (int b = 0; b < W; ++b)
        for (int64_t r = rb; r < re; ++r) y[b * ldy + r] = tile[(r - rb) * W + b];
    }
  }
}

// Same for a narrow chunk of W < L batch columns (W == 1: a dot product per row, two vector accumulators).
template <typename T, typename I, int W>
void chunk_scalar(const T* xc, const T* vals, const I* idx, const int32_t* s0, const int32_t* s1, int64_t r0,
                  int64_t r1, const T* bias, T* y, int64_t ldy) {
  for (int64_t r = r0; r < r1; ++r) {
    const T bv = bias ? bias[r] : T(0);
    int32_t k = s0[r];
    const int32_t e = s1[r];
    if (W == 1) {
      T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      typedef typename Simd<T>::type V;
      constexpr int L = Simd<T>::L;
      V a0 = V{}, a1 = V{};
      for (; k + 2 * L <= e; k += 2 * L) {  // one vector load of values per L entries; inputs assembled in a register
        V g0, g1;
#pragma GCC unroll 8
        for (int j = 0; j < L; ++j) {
          g0[j] = xc[idx[k + j]];
          g1[j] = xc[idx[k + L + j]];
        }
        a0 += *reinterpret_cast<const V*>(vals + k) * g0;
        a1 += *reinterpret_cast<const V*>(vals + k + L) * g1;
      }
      a0 += a1;
      for (int j = 0; j < L; j += 2) {
        s0 += a0[j];
        s1 += a0[j + 1];
      }
      for (; k + 4 <= e; k += 4) {
        s0 += vals[k] * xc[idx[k]];
        s1 += vals[k + 1] * xc[idx[k + 1]];
        s2 += vals[k + 2] * xc[idx[k + 2]];
        s3 += vals[k + 3] * xc[idx[k + 3]];
      }
      for (; k < e; ++k) s0 += vals[k] * xc[idx[k]];
      y[r] = bv + ((s0 + s1) + (s2 + s3));
    } else {
      T acc[W];
      for (int j = 0; j < W; ++j) acc[j] = bv;
      for (; k < e; ++k) {
        const T w = vals[k];
        const T* xp = xc + (int64_t)idx[k] * W;
        for (int j = 0; j < W; ++j) acc[j] += w * xp[j];
      }
      for (int j = 0; j < W; ++j) y[j * ldy + r] = acc[j];
    }
  }
}

// A per-thread scratch buffer of at least n elements, reused across calls (one per thread and value type).
template <typename T>
inline T* tile_buffer(int64_t n) {
  static thread_local std::vector<T> buf;
  if ((int64_t)buf.size() < n) buf.resize(n);
  return buf.data();
}

// Cache-blocked chunk_vec: rows are taken in groups whose partial sums (`tile`, [rows][W]) fit in L2, and within a
// group the nblk column blocks (row r's entries of block c are bs[c * rows + r] <= k < bs[(c + 1) * rows + r]) one at a
// time, so the block's slice of xc stays in cache while every row of the group uses it; then tile goes into y.
template <typename T, typename I, int NV>
void chunk_blocked(const T* xc, const T* vals, const I* idx, const int32_t* bs, int64_t nblk, int64_t rows, int64_t r0,
                   int64_t r1, const T* bias, T* y, int64_t ldy) {
  typedef typename Simd<T>::type V;
  constexpr int L = Simd<T>::L, W = NV * L;
  constexpr int64_t R = kTileBytes / (W * sizeof(T));
  T* tile = tile_buffer<T>(R * W);
  for (int64_t g0 = r0, g1; g0 < r1; g0 = g1) {
    g1 = std::min(r1, g0 + R);
    for (int64_t c = 0; c < nblk; ++c) {
      const int32_t* s0 = bs + c * rows;
      const int32_t* s1 = s0 + rows;
      for (int64_t r = g0; r < g1; ++r) {
        V* tp = reinterpret_cast<V*>(tile + (r - g0) * W);
        int32_t k = s0[r];
        const int32_t e = s1[r];
        if (c > 0 && k == e) continue;
        V acc[NV];
        const T bv = bias ? bias[r] : T(0);
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) acc[v] = c == 0 ? V{} + bv : tp[v];
        accumulate_row<T, I, NV>(acc, xc, vals, idx, k, e);
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) tp[v] = acc[v];
      }
    }
    int64_t r = g0;
    for (; r + L <= g1; r += L)
      for (int v = 0; v < NV; ++v) block_transpose<T>(tile + (r - g0) * W + v * L, W, y + v * L * ldy + r, ldy);
    for (; r < g1; ++r)
      for (int b = 0; b < W; ++b) y[b * ldy + r] = tile[(r - g0) * W + b];
  }
}

// Whether a chunk of width w over n features is worth column blocking (the chunk of the input overflows L1).
template <typename T>
inline bool use_blocks(int64_t nblk, int64_t w, int64_t n) {
  return nblk > 1 && w >= Simd<T>::L && n * w * (int64_t)sizeof(T) > kL1Bytes;
}

// Y[B, rows] (row stride ldy) = X W^T + bias for rows r0..r1, X given chunked feature-major (xt, n_in features);
// bs/nblk: optional column blocks of the matrix (see chunk_blocked), nblk <= 1 for none.
template <typename T, typename I>
void spmm_rows(const T* xt, int64_t B, int64_t n_in, const T* vals, const I* idx, const int32_t* ptr,
               const int32_t* bs, int64_t nblk, int64_t rows, int64_t r0, int64_t r1, const T* bias, T* y,
               int64_t ldy) {
  const int32_t* e = ptr + 1;
  for (int64_t b0 = 0, w; b0 < B; b0 += w) {
    w = chunk_width<T>(B - b0);
    const T* xc = xt + b0 * n_in;
    T* yc = y + b0 * ldy;
    auto narrow = [&](auto nw) { chunk_scalar<T, I, decltype(nw)::value>(xc, vals, idx, ptr, e, r0, r1, bias, yc, ldy); };
    if (use_blocks<T>(nblk, w, n_in))  // w >= L here: narrow is never taken
      dispatch_width<T>(w, [&](auto nv) {
        chunk_blocked<T, I, decltype(nv)::value>(xc, vals, idx, bs, nblk, rows, r0, r1, bias, yc, ldy);
      }, narrow);
    else
      dispatch_width<T>(w, [&](auto nv) {
        chunk_vec<T, I, decltype(nv)::value>(xc, vals, idx, ptr, e, r0, r1, bias, yc, ldy);
      }, narrow);
  }
}

// The L lane sums of L vectors: out[j] = sum of the lanes of s[j] (horizontal adds, one store for L results).
template <typename T>
inline typename Simd<T>::type lane_sums(const typename Simd<T>::type* s) {
  typedef typename Simd<T>::type V;
  constexpr int L = Simd<T>::L;
  V out;
  for (int j = 0; j < L; ++j) {
    T t = 0;
    for (int i = 0; i < L; ++i) t += s[j][i];
    out[j] = t;
  }
  return out;
}
#if defined(__AVX__)
template <>
inline vf lane_sums<float>(const vf* s) {
  const __m256 h0 = _mm256_hadd_ps((__m256)s[0], (__m256)s[1]), h1 = _mm256_hadd_ps((__m256)s[2], (__m256)s[3]),
               h2 = _mm256_hadd_ps((__m256)s[4], (__m256)s[5]), h3 = _mm256_hadd_ps((__m256)s[6], (__m256)s[7]);
  const __m256 q0 = _mm256_hadd_ps(h0, h1), q1 = _mm256_hadd_ps(h2, h3);  // lane halves of s0..s3 and s4..s7
  return (vf)_mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20), _mm256_permute2f128_ps(q0, q1, 0x31));
}
template <>
inline vd lane_sums<double>(const vd* s) {
  const __m256d h0 = _mm256_hadd_pd((__m256d)s[0], (__m256d)s[1]), h1 = _mm256_hadd_pd((__m256d)s[2], (__m256d)s[3]);
  return (vd)_mm256_add_pd(_mm256_permute2f128_pd(h0, h1, 0x20), _mm256_permute2f128_pd(h0, h1, 0x31));
}
#endif

// sum_v g[v] * xp[v]: the lane-wise partial products of one W-wide dot product (its lanes still to be added).
template <typename T, int NV>
inline typename Simd<T>::type row_dot(const typename Simd<T>::type* g, const typename Simd<T>::type* xp) {
  typename Simd<T>::type a = g[0] * xp[0];
#pragma GCC unroll 16
  for (int v = 1; v < NV; ++v) a += g[v] * xp[v];
  return a;
}

// dv[k] (+)= sum_{b < W} gc[row_k * W + b] * xc[idx[k] * W + b] for rows r0..r1 of one chunk of width W = NV * L
// (row r holds entries s0[r] <= k < s1[r]). L entries at a time: their L dot products end in one lane_sums.
template <typename T, typename I, int NV>
void sddmm_vec(const T* gc, const T* xc, const I* idx, const int32_t* s0, const int32_t* s1, int64_t r0, int64_t r1,
               T* dv, bool first) {
  typedef typename Simd<T>::type V;
  constexpr int L = Simd<T>::L, W = NV * L;
  for (int64_t r = r0; r < r1; ++r) {
    int32_t k = s0[r];
    const int32_t e = s1[r];
    if (k == e) continue;
    const V* g = reinterpret_cast<const V*>(gc + r * W);
    for (; k + L <= e; k += L) {
      V dots[L];
#pragma GCC unroll 8
      for (int j = 0; j < L; ++j) {
        const V* xp = reinterpret_cast<const V*>(xc + (int64_t)idx[k + j] * W);
        prefetch_ahead<W>(xc, idx, k + j, e);
        dots[j] = row_dot<T, NV>(g, xp);
      }
      V sums = lane_sums<T>(dots);
      V* out = reinterpret_cast<V*>(dv + k);
      *out = first ? sums : *out + sums;
    }
    for (; k < e; ++k) {
      const V a = row_dot<T, NV>(g, reinterpret_cast<const V*>(xc + (int64_t)idx[k] * W));
      T t = 0;
      for (int i = 0; i < L; ++i) t += a[i];
      dv[k] = first ? t : dv[k] + t;
    }
  }
}

template <typename T, typename I, int W>
void sddmm_scalar(const T* gc, const T* xc, const I* idx, const int32_t* s0, const int32_t* s1, int64_t r0, int64_t r1,
                  T* dv, bool first) {
  for (int64_t r = r0; r < r1; ++r) {
    T gr[W];
    for (int b = 0; b < W; ++b) gr[b] = gc[r * W + b];
    for (int32_t k = s0[r], e = s1[r]; k < e; ++k) {
      const T* xp = xc + (int64_t)idx[k] * W;
      T total = gr[0] * xp[0];
      for (int b = 1; b < W; ++b) total += gr[b] * xp[b];
      dv[k] = first ? total : dv[k] + total;
    }
  }
}

// dv[k] (+)= sum_b g[b, row_k] x[b, idx_k] for rows r0..r1; g (rows features) and x (cols features) chunked;
// bs/nblk: optional column blocks, taken one at a time per row group so that the block's slice of x stays in cache.
template <typename T, typename I>
void sddmm_rows(const T* g, const T* xt, int64_t B, int64_t rows, int64_t cols, const I* idx, const int32_t* ptr,
                const int32_t* bs, int64_t nblk, int64_t r0, int64_t r1, T* dv) {
  for (int64_t b0 = 0, w; b0 < B; b0 += w) {
    w = chunk_width<T>(B - b0);
    const T* gc = g + b0 * rows;
    const T* xc = xt + b0 * cols;
    const bool first = b0 == 0, blocked = use_blocks<T>(nblk, w, cols);
    const int64_t group = blocked ? std::max<int64_t>(1, kTileBytes / (w * (int64_t)sizeof(T))) : r1 - r0;
    for (int64_t g0 = r0, g1; g0 < r1; g0 = g1) {  // row groups whose gradient rows stay in L2
      g1 = std::min(r1, g0 + group);
      for (int64_t c = 0; c < (blocked ? nblk : 1); ++c) {
        const int32_t* s0 = blocked ? bs + c * rows : ptr;
        const int32_t* s1 = blocked ? s0 + rows : ptr + 1;
        dispatch_width<T>(w, [&](auto nv) {
          sddmm_vec<T, I, decltype(nv)::value>(gc, xc, idx, s0, s1, g0, g1, dv, first);
        }, [&](auto nw) { sddmm_scalar<T, I, decltype(nw)::value>(gc, xc, idx, s0, s1, g0, g1, dv, first); });
      }
    }
  }
}

// Runs body(t, n) on `use` threads in one OpenMP region (body may contain `#pragma omp barrier`), or inline.
template <typename F>
inline void run_parallel(int use, F body) {
  if (use == 1) return body(0, 1);
#pragma omp parallel num_threads(use)
  body(omp_get_thread_num(), omp_get_num_threads());
}

// y[B, rows] = x[B, cols] W^T + bias; x has strides (sb, sj); xt (when not null) receives x chunked feature-major;
// bs/nblk: the matrix's column blocks (see chunk_blocked), or nblk <= 1.
template <typename T, typename I>
void forward(const T* x, int64_t B, int64_t cols, int64_t sb, int64_t sj, T* xt, const T* vals, const I* idx,
             const int32_t* ptr, const int32_t* bs, int64_t nblk, int64_t rows, const T* bias, T* y, int nt) {
  const int use = threads_for(nt, ((int64_t)ptr[rows] + rows + cols) * B);
  const int64_t nbj = (cols + 31) / 32;
  run_parallel(use, [&](int t, int n) {
    if (xt != nullptr) {
      to_chunked_blocks<T>(x, B, cols, sb, sj, xt, nbj * t / n, nbj * (t + 1) / n);
#pragma omp barrier
    }
    spmm_rows<T, I>(xt ? xt : x, B, cols, vals, idx, ptr, bs, nblk, rows, split(ptr, rows, t, n),
                    split(ptr, rows, t + 1, n), bias, y, rows);
  });
}

// Gradients of y = x W^T + b given dy [B, rows] (strides sb, sj; dyt receives it chunked when not null) and the
// input: x (strides sxb, sxj) is re-chunked into xt when both are given; xt alone is an already chunked input; x alone
// is used as is (valid for one contiguous row). cptr/cidx/perm: the CSC layout (column pointers, row of each entry,
// CSR slot of each entry); bs/nblk and cbs/ncblk: column blocks of the CSR and of the CSC layout (nblk <= 1: none).
// Null outputs are skipped. One parallel region: transpose dy and gather the CSC values, then rows, then columns.
template <typename T, typename I>
void backward(const T* dy, int64_t B, int64_t rows, int64_t sb, int64_t sj, T* dyt, const T* x, int64_t cols,
              int64_t sxb, int64_t sxj, T* xt, const T* vals, const I* idx, const int32_t* ptr, const int32_t* bs,
              int64_t nblk, const int32_t* cptr, const int32_t* cidx, const int32_t* perm, const int32_t* cbs,
              int64_t ncblk, T* dx, T* dv, T* db, int nt) {
  const T* g = dyt ? dyt : dy;
  const T* xf = xt ? xt : x;  // chunked input
  const int64_t nnz = ptr[rows], nbj = (rows + 31) / 32, nbx = (cols + 31) / 32;
  static thread_local std::vector<T> vt;  // reused: no page faults from a fresh buffer on every call
  if (dx != nullptr && (int64_t)vt.size() < nnz) vt.resize(nnz);
  T* vtp = vt.data();  // the calling thread's buffer, shared with the workers (thread_local is per thread)
  const int use = threads_for(nt, (nnz + rows + cols) * B);
  run_parallel(use, [&](int t, int n) {
    if (dyt != nullptr) to_chunked_blocks<T>(dy, B, rows, sb, sj, dyt, nbj * t / n, nbj * (t + 1) / n);
    if (x && xt && dv) to_chunked_blocks<T>(x, B, cols, sxb, sxj, xt, nbx * t / n, nbx * (t + 1) / n);
    if (dx != nullptr)
      for (int64_t k = nnz * t / n, e = nnz * (t + 1) / n; k < e; ++k) vtp[k] = perm ? vals[perm[k]] : vals[k];
#pragma omp barrier
    const int64_t r0 = split(ptr, rows, t, n), r1 = split(ptr, rows, t + 1, n);
    if (db != nullptr) {
      for (int64_t r = r0; r < r1; ++r) db[r] = 0;
      for (int64_t b0 = 0, w; b0 < B; b0 += w) {
        w = chunk_width<T>(B - b0);
        for (int64_t r = r0; r < r1; ++r) {
          const T* gp = g + b0 * rows + r * w;
          T s = 0;
#pragma omp simd reduction(+ : s)
          for (int64_t b = 0; b < w; ++b) s += gp[b];
          db[r] += s;
        }
      }
    }
    if (dv != nullptr) sddmm_rows<T, I>(g, xf, B, rows, cols, idx, ptr, bs, nblk, r0, r1, dv);
    if (dx != nullptr)
      spmm_rows<T, int32_t>(g, B, rows, vtp, cidx, cptr, cbs, ncblk, cols, split(cptr, cols, t, n),
                            split(cptr, cols, t + 1, n), nullptr, dx, cols);
  });
}

}  // namespace

// ------------------------------------------------------------------------------------------------------------ ABI
// Bump SRL_ABI_VERSION with any change of the structs, the dtype codes, the status codes or the entry points, and
// mirror it in sparse_rl/nn/backends/_abi.py (ABI_VERSION and the ctypes structs). Every field is 8 bytes wide, so
// the layouts have no padding on any 64-bit ABI.
#define SRL_ABI_VERSION 3

// dtype codes: the width in bits (0 is never valid, so a field left at zero is caught)
enum : int64_t { SRL_INT16 = 16, SRL_INT32 = 32, SRL_FLOAT32 = 1032, SRL_FLOAT64 = 1064 };
// status codes returned by the entry points
enum : int64_t { SRL_OK = 0, SRL_BAD_DTYPE = 1, SRL_BAD_ARGUMENT = 2 };

// A sparse matrix [rows, cols] in CSR. The CSC layout of a weight W is passed as the CSR of W^T whose entries are
// those of W permuted: perm[k] is the slot in the values array of entry k (null: entry k is slot k).
#define SRL_CSR_FIELDS(X)                                                                                              \
  X(const int32_t*, indptr)  /* [rows + 1] first entry of each row */                                                  \
  X(const void*, indices)    /* [nnz] column of each entry, int16 or int32 (index_dtype), ascending within a row */    \
  X(const int32_t*, perm)    /* [nnz] values slot of each entry, or null for the identity */                           \
  X(const int32_t*, blocks)  /* [(nblk + 1) * rows] first entry of each row in each column block, or null */           \
  X(int64_t, nblk)           /* number of column blocks (<= 1: none) */                                                \
  X(int64_t, rows)                                                                                                     \
  X(int64_t, cols)                                                                                                     \
  X(int64_t, index_dtype)    /* SRL_INT16 or SRL_INT32 */

// y = x W^T + bias. Dense tensors hold `dtype` elements; x is [batch, cols] with the given strides (in elements). The
// weight's perm must be null (the values are in CSR order).
#define SRL_FORWARD_FIELDS(X)                                                                                          \
  X(const struct srl_csr*, weight)                                                                                     \
  X(int64_t, dtype)             /* SRL_FLOAT32 or SRL_FLOAT64: values, bias, x, x_chunked and y */                     \
  X(const void*, values)        /* [nnz] */                                                                            \
  X(const void*, bias)          /* [rows] or null */                                                                   \
  X(const void*, x)                                                                                                    \
  X(int64_t, batch)                                                                                                    \
  X(int64_t, x_stride_batch)                                                                                           \
  X(int64_t, x_stride_feature)                                                                                         \
  X(void*, x_chunked)           /* [batch * cols] receives x chunked; null when x is one contiguous row */             \
  X(void*, y)                   /* [batch, rows] contiguous */                                                         \
  X(int64_t, threads)

// Gradients of y = x W^T + bias given dy. The input comes chunked (x_chunked, saved by the forward) or, for one
// contiguous row, as x itself; when both are given, x (with its strides) is chunked into x_chunked first. Null outputs
// are skipped; dx needs weight_t. The weight's perm must be null.
#define SRL_BACKWARD_FIELDS(X)                                                                                         \
  X(const struct srl_csr*, weight)                                                                                     \
  X(const struct srl_csr*, weight_t)  /* W^T in CSR (int32 indices, perm): the CSC layout of W, or null */             \
  X(int64_t, dtype)                                                                                                    \
  X(const void*, values)                                                                                               \
  X(const void*, dy)                  /* [batch, rows] with the given strides */                                       \
  X(int64_t, batch)                                                                                                    \
  X(int64_t, dy_stride_batch)                                                                                          \
  X(int64_t, dy_stride_feature)                                                                                        \
  X(void*, dy_chunked)                /* [batch * rows] scratch for dy chunked; null for one contiguous row */         \
  X(const void*, x)                                                                                                    \
  X(int64_t, x_stride_batch)                                                                                           \
  X(int64_t, x_stride_feature)                                                                                         \
  X(void*, x_chunked)                                                                                                  \
  X(void*, dx)                        /* [batch, cols] or null */                                                      \
  X(void*, dvalues)                   /* [nnz] or null */                                                              \
  X(void*, dbias)                     /* [rows] or null */                                                             \
  X(int64_t, threads)

#define SRL_DECLARE(type, name) type name;
extern "C" {
struct srl_csr { SRL_CSR_FIELDS(SRL_DECLARE) };
struct srl_forward_args { SRL_FORWARD_FIELDS(SRL_DECLARE) };
struct srl_backward_args { SRL_BACKWARD_FIELDS(SRL_DECLARE) };
}

namespace {

template <typename T>
struct Type { typedef T type; };

// The one dtype dispatch: f(Type<T>{}, Type<I>{}) for the value type T and the index type I of the codes.
template <typename F>
int64_t dispatch_dtypes(int64_t dtype, int64_t index_dtype, F&& f) {
  if (dtype == SRL_FLOAT32 && index_dtype == SRL_INT16) f(Type<float>{}, Type<int16_t>{});
  else if (dtype == SRL_FLOAT32 && index_dtype == SRL_INT32) f(Type<float>{}, Type<int32_t>{});
  else if (dtype == SRL_FLOAT64 && index_dtype == SRL_INT16) f(Type<double>{}, Type<int16_t>{});
  else if (dtype == SRL_FLOAT64 && index_dtype == SRL_INT32) f(Type<double>{}, Type<int32_t>{});
  else return SRL_BAD_DTYPE;
  return SRL_OK;
}

// "name size field@offset ..." of one struct, from its field list.
#define SRL_DESCRIBE(type, name) out += " " #name "@" + std::to_string(offsetof(SRL_STRUCT, name));

std::string describe_layout() {
  std::string out = "srl_csr " + std::to_string(sizeof(srl_csr));
#define SRL_STRUCT srl_csr
  SRL_CSR_FIELDS(SRL_DESCRIBE)
#undef SRL_STRUCT
  out += "; srl_forward_args " + std::to_string(sizeof(srl_forward_args));
#define SRL_STRUCT srl_forward_args
  SRL_FORWARD_FIELDS(SRL_DESCRIBE)
#undef SRL_STRUCT
  out += "; srl_backward_args " + std::to_string(sizeof(srl_backward_args));
#define SRL_STRUCT srl_backward_args
  SRL_BACKWARD_FIELDS(SRL_DESCRIBE)
#undef SRL_STRUCT
  return out;
}

}  // namespace

extern "C" int64_t srl_abi_version() { return SRL_ABI_VERSION; }

// Every struct's size and field offsets, e.g. "srl_csr 64 indptr@0 indices@8 ...; srl_forward_args ...".
extern "C" const char* srl_abi_layout() {
  static const std::string layout = describe_layout();
  return layout.c_str();
}

extern "C" int64_t srl_forward(const srl_forward_args* a) {
  if (a == nullptr || a->weight == nullptr || a->weight->perm != nullptr) return SRL_BAD_ARGUMENT;
  const srl_csr& w = *a->weight;
  return dispatch_dtypes(a->dtype, w.index_dtype, [&](auto t, auto i) {
    typedef typename decltype(t)::type T;
    typedef typename decltype(i)::type I;
    forward<T, I>(static_cast<const T*>(a->x), a->batch, w.cols, a->x_stride_batch, a->x_stride_feature,
                  static_cast<T*>(a->x_chunked), static_cast<const T*>(a->values), static_cast<const I*>(w.indices),
                  w.indptr, w.blocks, w.nblk, w.rows, static_cast<const T*>(a->bias), static_cast<T*>(a->y),
                  static_cast<int>(a->threads));
  });
}

extern "C" int64_t srl_backward(const srl_backward_args* a) {
  if (a == nullptr || a->weight == nullptr || a->weight->perm != nullptr) return SRL_BAD_ARGUMENT;
  const srl_csr& w = *a->weight;
  const srl_csr* wt = a->weight_t;
  if (a->dx != nullptr && (wt == nullptr || wt->index_dtype != SRL_INT32 || wt->rows != w.cols || wt->cols != w.rows))
    return SRL_BAD_ARGUMENT;
  return dispatch_dtypes(a->dtype, w.index_dtype, [&](auto t, auto i) {
    typedef typename decltype(t)::type T;
    typedef typename decltype(i)::type I;
    const bool has_t = a->dx != nullptr;
    backward<T, I>(static_cast<const T*>(a->dy), a->batch, w.rows, a->dy_stride_batch, a->dy_stride_feature,
                   static_cast<T*>(a->dy_chunked), static_cast<const T*>(a->x), w.cols, a->x_stride_batch,
                   a->x_stride_feature, static_cast<T*>(a->x_chunked), static_cast<const T*>(a->values),
                   static_cast<const I*>(w.indices), w.indptr, w.blocks, w.nblk, has_t ? wt->indptr : nullptr,
                   has_t ? static_cast<const int32_t*>(wt->indices) : nullptr, has_t ? wt->perm : nullptr,
                   has_t ? wt->blocks : nullptr, has_t ? wt->nblk : 0, static_cast<T*>(a->dx),
                   static_cast<T*>(a->dvalues), static_cast<T*>(a->dbias), static_cast<int>(a->threads));
  });
}
