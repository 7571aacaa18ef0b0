// CSR sparse-matrix kernels of sparse_rl: forward (with fused bias and activation), gradient to the input, to the
// values and to the bias. No dependency beyond the C++ standard library and OpenMP: csr_kernels.cpp wraps them in a C
// ABI for ctypes, torch_ops.cpp registers them as PyTorch operators.
//
// Layout. The weight W is [rows, cols] in CSR (values, column indices of type I, int32 row pointers). Dense activations
// are handled "feature-major" (FM): element (b, j) of a [B, n] activation lives at x[j * ld + b], so that every stored
// weight multiplies a contiguous run of batch entries. The batch is cut into chunks of up to 8 SIMD registers that are
// accumulated in registers per output row. Batch-major ([B, n], any strides) inputs are transposed to FM once; outputs
// are written FM directly, or batch-major through in-register block transposes. Consecutive sparse layers exchange FM
// activations, so an MLP pays one transpose at its input and none between layers. Threads split rows (or columns)
// balanced by their nonzeros.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>
#if defined(__AVX__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace srl {

#ifdef _OPENMP
inline int thread_num() { return omp_get_thread_num(); }
inline int num_threads() { return omp_get_num_threads(); }
#else
inline int thread_num() { return 0; }
inline int num_threads() { return 1; }
#endif

constexpr int64_t kParallelWork = 1 << 18;  // (nnz + rows + cols) * batch below which a call stays single-threaded
#ifndef SRL_L1_BYTES
#define SRL_L1_BYTES (24 << 10)
#endif
constexpr int64_t kL1Bytes = SRL_L1_BYTES;  // chunk of the input above which column blocks are used (beyond L1)
constexpr int32_t kAhead = 8;               // entries ahead whose input rows are prefetched
#ifndef SRL_TILE_BYTES
#define SRL_TILE_BYTES (128 << 10)
#endif
constexpr int64_t kTileBytes = SRL_TILE_BYTES;  // partial sums of one row group in a column-blocked chunk (half of L2)

// Activations fused into the kernels' epilogue (forward) and into the output-gradient pass (backward).
enum Act : int64_t { ACT_NONE = 0, ACT_RELU = 1, ACT_TANH = 2 };

typedef float vf __attribute__((vector_size(32), aligned(4)));
typedef double vd __attribute__((vector_size(32), aligned(8)));
typedef int32_t vi __attribute__((vector_size(32), aligned(4)));
typedef int64_t vl __attribute__((vector_size(32), aligned(8)));
template <typename T> struct Simd;
template <> struct Simd<float> { typedef vf type; typedef vi mask; static constexpr int L = 8; };
template <> struct Simd<double> { typedef vd type; typedef vl mask; static constexpr int L = 4; };

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

// ------------------------------------------------------------------------------------------------- activations
// tanh as Eigen computes it for float (a 13/6 rational approximation on [-7.9, 7.9], a few ulp from std::tanh).
inline vf tanh_vec(vf x) {
  const vf lim = vf{} + 7.90531110763549805f;
  x = x > lim ? lim : x;
  x = x < -lim ? -lim : x;
  const vf x2 = x * x;
  vf p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  p = p * x;
  vf q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  const vf r = p / q;
  const vf ax = x < 0 ? -x : x;
  return ax < 0.0004f ? x : r;
}
inline vd tanh_vec(vd x) {
  for (int i = 0; i < 4; ++i) x[i] = std::tanh(x[i]);
  return x;
}
inline float tanh_scalar(float x) { vf v = vf{} + x; return tanh_vec(v)[0]; }
inline double tanh_scalar(double x) { return std::tanh(x); }

template <typename V>
inline V act_vec(V a, int64_t act) {
  if (act == ACT_RELU) return a > 0 ? a : V{};
  if (act == ACT_TANH) return tanh_vec(a);
  return a;
}
template <typename T>
inline T act_scalar(T a, int64_t act) {
  if (act == ACT_RELU) return a > 0 ? a : T(0);
  if (act == ACT_TANH) return tanh_scalar(a);
  return a;
}
// dL/dz from dL/dy and the activation's output y = f(z).
template <typename V>
inline V act_grad_vec(V g, V y, int64_t act) {
  if (act == ACT_RELU) return y > 0 ? g : V{};
  if (act == ACT_TANH) return g * (1 - y * y);
  return g;
}
template <typename T>
inline T act_grad_scalar(T g, T y, int64_t act) {
  if (act == ACT_RELU) return y > 0 ? g : T(0);
  if (act == ACT_TANH) return g * (1 - y * y);
  return g;
}

// ----------------------------------------------------------------------------------------------------- layout
// Width of the next batch chunk given `rem` remaining columns: 8, 4, 2 or 1 SIMD registers, then 4, 2, 1 scalars.
#ifndef SRL_MAX_NV
#define SRL_MAX_NV 8
#endif
template <typename T>
inline int64_t chunk_width(int64_t rem) {
  constexpr int64_t L = Simd<T>::L;
  if (rem >= 8 * L && SRL_MAX_NV >= 8) return 8 * L;
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

// Leading dimension of a feature-major [n, B] buffer: B itself up to one chunk (a chunk is then the whole contiguous
// buffer), else B rounded up to an odd number of cache lines, so that the rows of a chunk (B-strided) spread over all
// cache sets instead of a few: a power-of-two stride (B = 256: 1 KiB) leaves a chunk a fraction of L1 (measured 24 vs 35
// G multiply-adds/s with a 16 KiB chunk).
template <typename T>
inline int64_t fm_ld(int64_t B) {
  constexpr int64_t line = 64 / sizeof(T);
  if (B <= 8 * Simd<T>::L) return B;
  int64_t lines = (B + line - 1) / line;
  if (lines % 2 == 0) ++lines;
  return lines * line;
}

// dst[j * ldd + b] *= f'(y(b, j)) over the tile b0 <= b < b0 + nb, j0 <= j < j0 + nj (dst feature-major, y given by
// strides: y(b, j) = y[b * syb + j * syj]); a full S x S tile of a batch-major y is transposed in registers first.
template <typename T>
inline void act_grad_tile(T* dst, int64_t ldd, const T* y, int64_t syb, int64_t syj, int64_t b0, int64_t nb, int64_t j0,
                          int64_t nj, int64_t act) {
  typedef typename Simd<T>::type V;
  constexpr int64_t L = Simd<T>::L, S = 64 / sizeof(T);
  alignas(64) T yt[S * S];
  const T* yp = nullptr;
  int64_t ldt = 0;
  if (syb == 1) {
    yp = y + j0 * syj + b0;
    ldt = syj;
  } else if (syj == 1 && nb == S && nj == S) {
    for (int64_t jj = 0; jj < S; jj += L)
      for (int64_t bb = 0; bb < S; bb += L) block_transpose<T>(y + (b0 + bb) * syb + j0 + jj, syb, yt + jj * S + bb, S);
    yp = yt;
    ldt = S;
  }
  if (yp != nullptr && nb % L == 0) {
    for (int64_t j = 0; j < nj; ++j) {
      T* d = dst + (j0 + j) * ldd + b0;
      for (int64_t b = 0; b < nb; b += L)
        *reinterpret_cast<V*>(d + b) =
            act_grad_vec<V>(*reinterpret_cast<const V*>(d + b), *reinterpret_cast<const V*>(yp + j * ldt + b), act);
    }
    return;
  }
  for (int64_t j = j0; j < j0 + nj; ++j)
    for (int64_t b = b0; b < b0 + nb; ++b) dst[j * ldd + b] = act_grad_scalar<T>(dst[j * ldd + b], y[b * syb + j * syj], act);
}

// Feature-major copy of features j0..j1 of a [B, n] activation given by strides: dst[j * ldd + b] = src[b * sb + j * sj],
// then, when y is given (element (b, j) at y[b * syb + j * syj]), dst = dst * f'(y) for the activation f (the output
// gradient of a fused activation turned into the gradient of its input), tile by tile while the tile is in L1.
template <typename T>
void to_fm(const T* src, int64_t B, int64_t sb, int64_t sj, T* dst, int64_t ldd, int64_t j0, int64_t j1, const T* y,
           int64_t syb, int64_t syj, int64_t act) {
  constexpr int64_t L = Simd<T>::L, S = 64 / sizeof(T);  // S x S tiles: one cache line per source row and per dst row
  const bool grad = y != nullptr && act != ACT_NONE;
  if (sb == 1 || B == 1) {  // already feature-major (or one row): copy rows
    for (int64_t jb = j0; jb < j1; jb += S) {
      const int64_t je = std::min(j1, jb + S);
      for (int64_t j = jb; j < je; ++j) std::memcpy(dst + j * ldd, src + j * sj, sizeof(T) * B);
      if (grad)
        for (int64_t b0 = 0; b0 < B; b0 += S) act_grad_tile<T>(dst, ldd, y, syb, syj, b0, std::min(S, B - b0), jb, je - jb, act);
    }
    return;
  }
  for (int64_t b0 = 0; b0 < B; b0 += S) {
    const int64_t nb = std::min(S, B - b0);
    for (int64_t jb = j0; jb < j1; jb += S) {
      const int64_t nj = std::min(S, j1 - jb);
      if (sj == 1 && nb == S && nj == S) {  // batch-major rows: in-register L x L transposes, whole source lines
        for (int64_t jj = 0; jj < S; jj += L)
          for (int64_t bb = 0; bb < S; bb += L)
            block_transpose<T>(src + (b0 + bb) * sb + jb + jj, sb, dst + (jb + jj) * ldd + b0 + bb, ldd);
      } else {
        for (int64_t b = b0; b < b0 + nb; ++b)
          for (int64_t j = jb; j < jb + nj; ++j) dst[j * ldd + b] = src[b * sb + j * sj];
      }
      if (grad) act_grad_tile<T>(dst, ldd, y, syb, syj, b0, nb, jb, nj, act);
    }
  }
}

// Prefetch the W-wide input row that entry k + kAhead will read (rows are visited in random order, which the hardware
// prefetchers cannot predict), when that entry belongs to the same row range (< e).
template <int W, typename T, typename I>
inline void prefetch_ahead(const T* xc, int64_t ldx, const I* idx, int32_t k, int32_t e) {
  if (k + kAhead < e) {
    const char* p = reinterpret_cast<const char*>(xc + (int64_t)idx[k + kAhead] * ldx);
#pragma GCC unroll 8
    for (int off = 0; off < W * (int)sizeof(T); off += 64) __builtin_prefetch(p + off);
  }
}

// ------------------------------------------------------------------------------------------------------ SpMM
// acc[v] += sum_{k <= j < e} vals[j] * xc[idx[j] * ldx + v * L ...]: one row's entries over a chunk of W = NV * L.
template <typename T, typename I, int NV>
inline void accumulate_row(typename Simd<T>::type* acc, const T* xc, int64_t ldx, const T* vals, const I* idx,
                           int32_t k, int32_t e) {
  typedef typename Simd<T>::type V;
  constexpr int L = Simd<T>::L;
  for (; k < e; ++k) {
    const T w = vals[k];
    const T* xp = xc + (int64_t)idx[k] * ldx;
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[v] += w * *reinterpret_cast<const V*>(xp + v * L);  // V allows unaligned
  }
}

// Where a chunk's results go: feature-major (y[r * ldy + b], ldy >= B) or batch-major (y[b * ldy + r]); yc is the
// output at the chunk's first batch column.
template <typename T>
struct Out {
  T* yc;
  int64_t ldy;
  bool fm;
  int64_t act;
};

// Store rows rb..re (re - rb <= G) of a [G][W] tile of pre-activation sums into the output.
template <typename T, int NV>
inline void store_tile(const T* tile, int64_t rb, int64_t re, const Out<T>& o) {
  typedef typename Simd<T>::type V;
  constexpr int L = Simd<T>::L, W = NV * L, G = 64 / sizeof(T);
  if (o.fm) {
    for (int64_t r = rb; r < re; ++r) {
      const V* tp = reinterpret_cast<const V*>(tile + (r - rb) * W);
      V* yp = reinterpret_cast<V*>(o.yc + r * o.ldy);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) yp[v] = act_vec<V>(tp[v], o.act);
    }
    return;
  }
  const T* src = tile;
  alignas(64) T act_tile[G * W];
  if (o.act != ACT_NONE) {  // batch-major with an activation: apply it in the tile, then transpose
    for (int64_t i = 0; i < (re - rb) * NV; ++i)
      reinterpret_cast<V*>(act_tile)[i] = act_vec<V>(reinterpret_cast<const V*>(tile)[i], o.act);
    src = act_tile;
  }
  if (re - rb == G) {
    for (int v = 0; v < NV; ++v)
      for (int h = 0; h < G; h += L) block_transpose<T>(src + h * W + v * L, W, o.yc + v * L * o.ldy + rb + h, o.ldy);
  } else {
    for (int b = 0; b < W; ++b)
      for (int64_t r = rb; r < re; ++r) o.yc[b * o.ldy + r] = src[(r - rb) * W + b];
  }
}

// y = act(bias + W x) for rows r0..r1 of one chunk of W = NV * L batch columns; row r holds entries s0[r] <= k < s1[r].
template <typename T, typename I, int NV>
void chunk_vec(const T* xc, int64_t ldx, const T* vals, const I* idx, const int32_t* s0, const int32_t* s1, int64_t r0,
               int64_t r1, const T* bias, const Out<T>& o) {
  typedef typename Simd<T>::type V;
  constexpr int L = Simd<T>::L, W = NV * L, G = 64 / sizeof(T);  // G rows fill one cache line of a batch-major y
  alignas(64) T tile[G * W];
  for (int64_t rb = r0; rb < r1; rb += G) {
    const int64_t re = std::min(r1, rb + G);
    for (int64_t r = rb; r < re; ++r) {
      V acc[NV];
      const T bv = bias ? bias[r] : T(0);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[v] = V{} + bv;
      accumulate_row<T, I, NV>(acc, xc, ldx, vals, idx, s0[r], s1[r]);
      V* tp = reinterpret_cast<V*>(tile + (r - rb) * W);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) tp[v] = acc[v];
    }
    store_tile<T, NV>(tile, rb, re, o);
  }
}

// Same for a narrow chunk of W < L batch columns (W == 1: a sparse dot product per row, two vector accumulators fed
// L entries at a time).
template <typename T, typename I, int W>
void chunk_scalar(const T* xc, int64_t ldx, const T* vals, const I* idx, const int32_t* s0, const int32_t* s1,
                  int64_t r0, int64_t r1, const T* bias, const Out<T>& o) {
  const int64_t sy_b = o.fm ? 1 : o.ldy, sy_r = o.fm ? o.ldy : 1;
  for (int64_t r = r0; r < r1; ++r) {
    const T bv = bias ? bias[r] : T(0);
    int32_t k = s0[r];
    const int32_t e = s1[r];
    if (W == 1) {
      typedef typename Simd<T>::type V;
      constexpr int L = Simd<T>::L;
      T t0 = 0, t1 = 0, t2 = 0, t3 = 0;
      V a0 = V{}, a1 = V{};
      if (ldx == 1) {
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
      }
      a0 += a1;
      for (int j = 0; j < L; j += 2) {
        t0 += a0[j];
        t1 += a0[j + 1];
      }
      for (; k + 4 <= e; k += 4) {
        t0 += vals[k] * xc[(int64_t)idx[k] * ldx];
        t1 += vals[k + 1] * xc[(int64_t)idx[k + 1] * ldx];
        t2 += vals[k + 2] * xc[(int64_t)idx[k + 2] * ldx];
        t3 += vals[k + 3] * xc[(int64_t)idx[k + 3] * ldx];
      }
      for (; k < e; ++k) t0 += vals[k] * xc[(int64_t)idx[k] * ldx];
      o.yc[r * sy_r] = act_scalar<T>(bv + ((t0 + t1) + (t2 + t3)), o.act);
    } else {
      T acc[W];
      for (int j = 0; j < W; ++j) acc[j] = bv;
      for (; k < e; ++k) {
        const T w = vals[k];
        const T* xp = xc + (int64_t)idx[k] * ldx;
        for (int j = 0; j < W; ++j) acc[j] += w * xp[j];
      }
      for (int j = 0; j < W; ++j) o.yc[j * sy_b + r * sy_r] = act_scalar<T>(acc[j], o.act);
    }
  }
}

// A per-thread scratch buffer of at least n elements, reused across calls (one per thread, value type and slot: slot 0
// holds the partial sums of chunk_blocked, the callers' own scratch takes other slots).
template <typename T, int Slot = 0>
inline T* tile_buffer(int64_t n) {
  static thread_local std::vector<T> buf;  // 64-byte aligned below: rows of the kernels' buffers start on cache lines
  constexpr int64_t pad = 64 / sizeof(T);
  if ((int64_t)buf.size() < n + pad) buf.resize(n + pad);
  const uintptr_t p = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<T*>((p + 63) & ~uintptr_t(63));
}

// Cache-blocked chunk_vec: rows are taken in groups whose partial sums (`tile`, [rows][W]) fit in L2, and within a
// group the nblk column blocks (row r's entries of block c are bs[c * rows + r] <= k < bs[(c + 1) * rows + r]) one at a
// time, so the block's slice of xc stays in cache while every row of the group uses it; then tile goes into y.
template <typename T, typename I, int NV>
void chunk_blocked(const T* xc, int64_t ldx, const T* vals, const I* idx, const int32_t* bs, int64_t nblk, int64_t rows,
                   int64_t r0, int64_t r1, const T* bias, const Out<T>& o) {
  typedef typename Simd<T>::type V;
  constexpr int L = Simd<T>::L, W = NV * L, G = 64 / sizeof(T);
  constexpr int64_t R = (kTileBytes / (W * sizeof(T))) / G * G;
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
        accumulate_row<T, I, NV>(acc, xc, ldx, vals, idx, k, e);
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) tp[v] = acc[v];
      }
    }
    for (int64_t rb = g0; rb < g1; rb += G) store_tile<T, NV>(tile + (rb - g0) * W, rb, std::min(g1, rb + G), o);
  }
}

// Whether a chunk of width w over n features is worth column blocking (the chunk of the input overflows L1).
template <typename T>
inline bool use_blocks(int64_t nblk, int64_t w, int64_t n) {
  return nblk > 1 && w >= Simd<T>::L && n * w * (int64_t)sizeof(T) > kL1Bytes;
}

// Y = act(X W^T + bias) for rows r0..r1 of W, X [B, n_in] feature-major (x[j * ldx + b]); bs/nblk: optional column
// blocks of the matrix (see chunk_blocked), nblk <= 1 for none; y feature-major (y_fm, y[r * ldy + b]) or batch-major.
template <typename T, typename I>
void spmm_rows(const T* x, int64_t ldx, int64_t B, int64_t n_in, const T* vals, const I* idx, const int32_t* ptr,
               const int32_t* bs, int64_t nblk, int64_t rows, int64_t r0, int64_t r1, const T* bias, T* y, int64_t ldy,
               bool y_fm, int64_t act) {
  const int32_t* e = ptr + 1;
  for (int64_t b0 = 0, w; b0 < B; b0 += w) {
    w = chunk_width<T>(B - b0);
    const T* xc = x + b0;
    const Out<T> o{y + (y_fm ? b0 : b0 * ldy), ldy, y_fm, act};
    auto narrow = [&](auto nw) { chunk_scalar<T, I, decltype(nw)::value>(xc, ldx, vals, idx, ptr, e, r0, r1, bias, o); };
    if (use_blocks<T>(nblk, w, n_in))  // w >= L here: narrow is never taken
      dispatch_width<T>(w, [&](auto nv) {
        chunk_blocked<T, I, decltype(nv)::value>(xc, ldx, vals, idx, bs, nblk, rows, r0, r1, bias, o);
      }, narrow);
    else
      dispatch_width<T>(w, [&](auto nv) {
        chunk_vec<T, I, decltype(nv)::value>(xc, ldx, vals, idx, ptr, e, r0, r1, bias, o);
      }, narrow);
  }
}

// ----------------------------------------------------------------------------------------------------- SDDMM
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
inline typename Simd<T>::type row_dot(const typename Simd<T>::type* g, const T* xp) {
  typedef typename Simd<T>::type V;
  constexpr int L = Simd<T>::L;
  V a = g[0] * *reinterpret_cast<const V*>(xp);
#pragma GCC unroll 16
  for (int v = 1; v < NV; ++v) a += g[v] * *reinterpret_cast<const V*>(xp + v * L);
  return a;
}

// dv[k] (+)= sum_{b < W} gc[row_k * ldg + b] * xc[idx[k] * ldx + b] for rows r0..r1 of one chunk of width W = NV * L
// (row r holds entries s0[r] <= k < s1[r]). The row's gradient chunk stays in registers; L entries at a time, their L
// dot products end in one lane_sums.
template <typename T, typename I, int NV>
void sddmm_vec(const T* gc, int64_t ldg, const T* xc, int64_t ldx, const I* idx, const int32_t* s0, const int32_t* s1,
               int64_t r0, int64_t r1, T* dv, bool first) {
  typedef typename Simd<T>::type V;
  constexpr int L = Simd<T>::L, W = NV * L;
  for (int64_t r = r0; r < r1; ++r) {
    int32_t k = s0[r];
    const int32_t e = s1[r];
    if (k == e) continue;
    V g[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) g[v] = *reinterpret_cast<const V*>(gc + r * ldg + v * L);
    for (; k + L <= e; k += L) {
      V dots[L];
#pragma GCC unroll 8
      for (int j = 0; j < L; ++j) {
        prefetch_ahead<W>(xc, ldx, idx, k + j, e);
        dots[j] = row_dot<T, NV>(g, xc + (int64_t)idx[k + j] * ldx);
      }
      V sums = lane_sums<T>(dots);
      V* out = reinterpret_cast<V*>(dv + k);
      *out = first ? sums : *out + sums;
    }
    if (k < e) {  // the last m < L entries: one more lane_sums over m dot products and L - m zeros
      const int m = e - k;
      V dots[L];
#pragma GCC unroll 8
      for (int j = 0; j < L; ++j) dots[j] = j < m ? row_dot<T, NV>(g, xc + (int64_t)idx[k + j] * ldx) : V{};
      const V sums = lane_sums<T>(dots);
      for (int j = 0; j < m; ++j) dv[k + j] = first ? sums[j] : dv[k + j] + sums[j];
    }
  }
}

template <typename T, typename I, int W>
void sddmm_scalar(const T* gc, int64_t ldg, const T* xc, int64_t ldx, const I* idx, const int32_t* s0,
                  const int32_t* s1, int64_t r0, int64_t r1, T* dv, bool first) {
  for (int64_t r = r0; r < r1; ++r) {
    T gr[W];
    for (int b = 0; b < W; ++b) gr[b] = gc[r * ldg + b];
    for (int32_t k = s0[r], e = s1[r]; k < e; ++k) {
      const T* xp = xc + (int64_t)idx[k] * ldx;
      T total = gr[0] * xp[0];
      for (int b = 1; b < W; ++b) total += gr[b] * xp[b];
      dv[k] = first ? total : dv[k] + total;
    }
  }
}

// dv[k] = sum_b g[row_k, b] x[idx_k, b] for rows r0..r1; g (ldg) and x (ldx) feature-major; bs/nblk: optional column
// blocks, taken one at a time per row group so that the block's slice of x stays in cache.
template <typename T, typename I>
void sddmm_rows(const T* g, int64_t ldg, const T* x, int64_t ldx, int64_t B, int64_t rows, int64_t cols, const I* idx,
                const int32_t* ptr, const int32_t* bs, int64_t nblk, int64_t r0, int64_t r1, T* dv) {
  for (int64_t b0 = 0, w; b0 < B; b0 += w) {
    w = chunk_width<T>(B - b0);
    const T* gc = g + b0;
    const T* xc = x + b0;
    const bool first = b0 == 0, blocked = use_blocks<T>(nblk, w, cols);
    const int64_t group = blocked ? std::max<int64_t>(1, kTileBytes / (w * (int64_t)sizeof(T))) : r1 - r0;
    for (int64_t g0 = r0, g1; g0 < r1; g0 = g1) {  // row groups whose gradient rows stay in L2
      g1 = std::min(r1, g0 + group);
      for (int64_t c = 0; c < (blocked ? nblk : 1); ++c) {
        const int32_t* s0 = blocked ? bs + c * rows : ptr;
        const int32_t* s1 = blocked ? s0 + rows : ptr + 1;
        dispatch_width<T>(w, [&](auto nv) {
          sddmm_vec<T, I, decltype(nv)::value>(gc, ldg, xc, ldx, idx, s0, s1, g0, g1, dv, first);
        }, [&](auto nw) { sddmm_scalar<T, I, decltype(nw)::value>(gc, ldg, xc, ldx, idx, s0, s1, g0, g1, dv, first); });
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------- entry level
// Runs body(t, n) on `use` threads in one OpenMP region (body may contain `#pragma omp barrier`), or inline.
template <typename F>
inline void run_parallel(int use, F body) {
  if (use == 1) return body(0, 1);
#pragma omp parallel num_threads(use)
  body(thread_num(), num_threads());
}

// A CSR matrix as the kernels take it (the CSC layout of a weight is the CSR of its transpose, int32 indices, with
// perm[k] the values slot of entry k).
template <typename I>
struct Csr {
  const int32_t* ptr;
  const I* idx;
  const int32_t* perm;
  const int32_t* blocks;
  int64_t nblk;
  int64_t rows;
  int64_t cols;
};

// A dense [B, n] activation: element (b, j) at p[b * sb + j * sj]. Feature-major when sb == 1 (or B == 1).
template <typename T>
struct Dense {
  const T* p;
  int64_t sb;
  int64_t sj;
  bool fm(int64_t B) const { return sb == 1 || B == 1; }
};

// y = act(x W^T + bias). x is used in place when feature-major, else transposed into xfm (row stride ldxfm, at least
// [cols, B]; it then holds the feature-major input for the backward). y: feature-major (y_fm, y[r * ldy + b]) or
// batch-major (y[b * ldy + r]).
template <typename T, typename I>
void forward(const Dense<T>& x, int64_t B, T* xfm, int64_t ldxfm, const T* vals, const Csr<I>& w, const T* bias,
             int64_t act, T* y, int64_t ldy, bool y_fm, int nt) {
  const int64_t rows = w.rows, cols = w.cols;
  const bool in_place = x.fm(B);
  const T* xs = in_place ? x.p : xfm;
  const int64_t ldx = in_place ? x.sj : ldxfm;
  const int use = threads_for(nt, ((int64_t)w.ptr[rows] + rows + cols) * B);
  const int64_t nbj = (cols + 31) / 32;
  run_parallel(use, [&](int t, int n) {
    if (!in_place) {
      to_fm<T>(x.p, B, x.sb, x.sj, xfm, ldxfm, std::min(cols, nbj * t / n * 32), std::min(cols, nbj * (t + 1) / n * 32),
               nullptr, 0, 0, ACT_NONE);
#pragma omp barrier
    }
    spmm_rows<T, I>(xs, ldx, B, cols, vals, w.idx, w.ptr, w.blocks, w.nblk, rows, split(w.ptr, rows, t, n),
                    split(w.ptr, rows, t + 1, n), bias, y, ldy, y_fm, act);
  });
}

// Gradients of y = act(x W^T + b) given dy. dy: [B, rows] by strides; y: the forward's output (by strides, read when
// act != none); x: the forward's input, feature-major (ldx). dz: scratch (row stride lddz) for the
// feature-major input gradient of the activation (unused when dy is feature-major and act is none). wt: the CSC layout
// (for dx). dx: feature-major (dx_fm, dx[j * lddx + b]) or batch-major (dx[b * lddx + j]). Null outputs are skipped.
// One parallel region: dz and the CSC values first, then rows (db, dv), then columns (dx).
template <typename T, typename I>
void backward(const Dense<T>& dy, int64_t B, const Dense<T>& y, int64_t act, const T* x, int64_t ldx, T* dz,
              int64_t lddz, const T* vals, const Csr<I>& w, const Csr<int32_t>& wt, T* dx, int64_t lddx, bool dx_fm, T* dv,
              T* db, int nt) {
  const int64_t rows = w.rows, cols = w.cols, nnz = w.ptr[rows];
  const bool in_place = dy.fm(B) && act == ACT_NONE;
  const T* g = in_place ? dy.p : dz;
  const int64_t ldg = in_place ? dy.sj : lddz;
  const int64_t nbj = (rows + 31) / 32;
  static thread_local std::vector<T> vt;  // reused: no page faults from a fresh buffer on every call
  if (dx != nullptr && (int64_t)vt.size() < nnz) vt.resize(nnz);
  T* vtp = vt.data();  // the calling thread's buffer, shared with the workers (thread_local is per thread)
  const int use = threads_for(nt, (nnz + rows + cols) * B);
  run_parallel(use, [&](int t, int n) {
    if (!in_place)
      to_fm<T>(dy.p, B, dy.sb, dy.sj, dz, lddz, std::min(rows, nbj * t / n * 32), std::min(rows, nbj * (t + 1) / n * 32),
               y.p, y.sb, y.sj, act);
    if (dx != nullptr)
      for (int64_t k = nnz * t / n, e = nnz * (t + 1) / n; k < e; ++k) vtp[k] = wt.perm ? vals[wt.perm[k]] : vals[k];
    if (use > 1) {
#pragma omp barrier
    }
    const int64_t r0 = split(w.ptr, rows, t, n), r1 = split(w.ptr, rows, t + 1, n);
    if (db != nullptr) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* gp = g + r * ldg;
        T s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t b = 0; b < B; ++b) s += gp[b];
        db[r] = s;
      }
    }
    if (dv != nullptr) sddmm_rows<T, I>(g, ldg, x, ldx, B, rows, cols, w.idx, w.ptr, w.blocks, w.nblk, r0, r1, dv);
    if (dx != nullptr)
      spmm_rows<T, int32_t>(g, ldg, B, rows, vtp, wt.idx, wt.ptr, wt.blocks, wt.nblk, cols, split(wt.ptr, cols, t, n),
                            split(wt.ptr, cols, t + 1, n), nullptr, dx, lddx, dx_fm, ACT_NONE);
  });
}

}  // namespace srl
