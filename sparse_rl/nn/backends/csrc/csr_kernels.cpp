// CSR sparse-matrix kernels for sparse_rl (forward, grad to input, grad to values, bias), called through ctypes.
//
// Layout: the weight W is [rows, cols] in CSR (values, column indices of type I, int32 row pointers). Activations are
// turned "chunked feature-major" (see to_chunked_blocks) so that every stored weight multiplies a contiguous run of
// batch entries; chunks of up to 8 SIMD registers are accumulated in registers per output row, and results go back to
// batch-major through in-register block transposes. Threads split rows (or columns) balanced by their nonzeros.
#include <algorithm>
#include <cstdint>
#include <cstring>
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

// y[b * ldy + r] = bias[r] + sum_k vals[k] * xc[idx[k] * W + b] for b < W = NV * L, rows r0..r1 (one chunk).
template <typename T, typename I, int NV>
void chunk_vec(const T* xc, const T* vals, const I* idx, const int32_t* ptr, int64_t r0, int64_t r1, const T* bias,
               T* y, int64_t ldy) {
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
      for (int32_t k = ptr[r], e = ptr[r + 1]; k < e; ++k) {
        const T w = vals[k];
        const T* xp = xc + (int64_t)idx[k] * W;
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) acc[v] += w * *reinterpret_cast<const V*>(xp + v * L);  // V allows unaligned
      }
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

// Same for a narrow chunk of W < L batch columns (W == 1 uses four partial sums to hide the FMA latency).
template <typename T, typename I, int W>
void chunk_scalar(const T* xc, const T* vals, const I* idx, const int32_t* ptr, int64_t r0, int64_t r1, const T* bias,
                  T* y, int64_t ldy) {
  for (int64_t r = r0; r < r1; ++r) {
    const T bv = bias ? bias[r] : T(0);
    int32_t k = ptr[r];
    const int32_t e = ptr[r + 1];
    if (W == 1) {
      T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
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

// Y[B, rows] (row stride ldy) = X W^T + bias for rows r0..r1, X given chunked feature-major (xt, n_in features).
template <typename T, typename I>
void spmm_rows(const T* xt, int64_t B, int64_t n_in, const T* vals, const I* idx, const int32_t* ptr, int64_t r0,
               int64_t r1, const T* bias, T* y, int64_t ldy) {
  constexpr int L = Simd<T>::L;
  for (int64_t b0 = 0, w; b0 < B; b0 += w) {
    w = chunk_width<T>(B - b0);
    const T* xc = xt + b0 * n_in;
    T* yc = y + b0 * ldy;
    if (w == 8 * L) chunk_vec<T, I, 8>(xc, vals, idx, ptr, r0, r1, bias, yc, ldy);
    else if (w == 4 * L) chunk_vec<T, I, 4>(xc, vals, idx, ptr, r0, r1, bias, yc, ldy);
    else if (w == 2 * L) chunk_vec<T, I, 2>(xc, vals, idx, ptr, r0, r1, bias, yc, ldy);
    else if (w == L) chunk_vec<T, I, 1>(xc, vals, idx, ptr, r0, r1, bias, yc, ldy);
    else if (w == 4) chunk_scalar<T, I, 4>(xc, vals, idx, ptr, r0, r1, bias, yc, ldy);
    else if (w == 2) chunk_scalar<T, I, 2>(xc, vals, idx, ptr, r0, r1, bias, yc, ldy);
    else chunk_scalar<T, I, 1>(xc, vals, idx, ptr, r0, r1, bias, yc, ldy);
  }
}

// dv[k] (+)= sum_{b < W} gc[row_k * W + b] * xc[idx[k] * W + b] for rows r0..r1 of one chunk of width W = NV * L.
template <typename T, typename I, int NV>
void sddmm_vec(const T* gc, const T* xc, const I* idx, const int32_t* ptr, int64_t r0, int64_t r1, T* dv, bool first) {
  typedef typename Simd<T>::type V;
  constexpr int L = Simd<T>::L, W = NV * L;
  for (int64_t r = r0; r < r1; ++r) {
    V g[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) g[v] = *reinterpret_cast<const V*>(gc + r * W + v * L);
    for (int32_t k = ptr[r], e = ptr[r + 1]; k < e; ++k) {
      const T* xp = xc + (int64_t)idx[k] * W;
      constexpr int P = NV < 4 ? NV : 4;  // independent partial sums: short dependency chains
      V part[P];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) {
        const V prod = g[v] * *reinterpret_cast<const V*>(xp + v * L);
        part[v % P] = v < P ? prod : part[v % P] + prod;
      }
#pragma GCC unroll 4
      for (int h = P / 2; h >= 1; h /= 2)
        for (int i = 0; i < h; ++i) part[i] += part[i + h];
      T lanes[L];
      std::memcpy(lanes, &part[0], sizeof(V));
#pragma GCC unroll 8
      for (int h = L / 2; h >= 1; h /= 2)
        for (int i = 0; i < h; ++i) lanes[i] += lanes[i + h];
      dv[k] = first ? lanes[0] : dv[k] + lanes[0];
    }
  }
}

template <typename T, typename I, int W>
void sddmm_scalar(const T* gc, const T* xc, const I* idx, const int32_t* ptr, int64_t r0, int64_t r1, T* dv,
                  bool first) {
  for (int64_t r = r0; r < r1; ++r) {
    T gr[W];
    for (int b = 0; b < W; ++b) gr[b] = gc[r * W + b];
    for (int32_t k = ptr[r], e = ptr[r + 1]; k < e; ++k) {
      const T* xp = xc + (int64_t)idx[k] * W;
      T total = gr[0] * xp[0];
      for (int b = 1; b < W; ++b) total += gr[b] * xp[b];
      dv[k] = first ? total : dv[k] + total;
    }
  }
}

// dv[k] (+)= sum_b g[b, row_k] x[b, idx_k] for rows r0..r1; g (rows features) and x (cols features) chunked.
template <typename T, typename I>
void sddmm_rows(const T* g, const T* xt, int64_t B, int64_t rows, int64_t cols, const I* idx, const int32_t* ptr,
                int64_t r0, int64_t r1, T* dv) {
  constexpr int L = Simd<T>::L;
  for (int64_t b0 = 0, w; b0 < B; b0 += w) {
    w = chunk_width<T>(B - b0);
    const T* gc = g + b0 * rows;
    const T* xc = xt + b0 * cols;
    const bool first = b0 == 0;
    if (w == 8 * L) sddmm_vec<T, I, 8>(gc, xc, idx, ptr, r0, r1, dv, first);
    else if (w == 4 * L) sddmm_vec<T, I, 4>(gc, xc, idx, ptr, r0, r1, dv, first);
    else if (w == 2 * L) sddmm_vec<T, I, 2>(gc, xc, idx, ptr, r0, r1, dv, first);
    else if (w == L) sddmm_vec<T, I, 1>(gc, xc, idx, ptr, r0, r1, dv, first);
    else if (w == 4) sddmm_scalar<T, I, 4>(gc, xc, idx, ptr, r0, r1, dv, first);
    else if (w == 2) sddmm_scalar<T, I, 2>(gc, xc, idx, ptr, r0, r1, dv, first);
    else sddmm_scalar<T, I, 1>(gc, xc, idx, ptr, r0, r1, dv, first);
  }
}

// Runs body(t, n) on `use` threads in one OpenMP region (body may contain `#pragma omp barrier`), or inline.
template <typename F>
inline void run_parallel(int use, F body) {
  if (use == 1) return body(0, 1);
#pragma omp parallel num_threads(use)
  body(omp_get_thread_num(), omp_get_num_threads());
}

// y[B, rows] = x[B, cols] W^T + bias; x has strides (sb, sj); xt (when not null) receives x chunked feature-major.
template <typename T, typename I>
void forward(const T* x, int64_t B, int64_t cols, int64_t sb, int64_t sj, T* xt, const T* vals, const I* idx,
             const int32_t* ptr, int64_t rows, const T* bias, T* y, int nt) {
  const int use = threads_for(nt, ((int64_t)ptr[rows] + rows + cols) * B);
  const int64_t nbj = (cols + 31) / 32;
  run_parallel(use, [&](int t, int n) {
    if (xt != nullptr) {
      to_chunked_blocks<T>(x, B, cols, sb, sj, xt, nbj * t / n, nbj * (t + 1) / n);
#pragma omp barrier
    }
    spmm_rows<T, I>(xt ? xt : x, B, cols, vals, idx, ptr, split(ptr, rows, t, n), split(ptr, rows, t + 1, n), bias,
                    y, rows);
  });
}

// Gradients of y = x W^T + b given dy [B, rows] (strides sb, sj; dyt receives it chunked when not null) and the
// input: x (strides sxb, sxj) is re-chunked into xt when both are given; xt alone is an already chunked input; x alone
// is used as is (valid for one contiguous row). cptr/cidx/perm: the CSC layout (column pointers, row of each entry, CSR slot of each entry).
// Null outputs are skipped. One parallel region: transpose dy and gather the CSC values, then rows, then columns.
template <typename T, typename I>
void backward(const T* dy, int64_t B, int64_t rows, int64_t sb, int64_t sj, T* dyt, const T* x, int64_t cols,
              int64_t sxb, int64_t sxj, T* xt, const T* vals, const I* idx, const int32_t* ptr, const int32_t* cptr,
              const int32_t* cidx, const int32_t* perm, T* dx, T* dv, T* db, int nt) {
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
      for (int64_t k = nnz * t / n, e = nnz * (t + 1) / n; k < e; ++k) vtp[k] = vals[perm[k]];
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
    if (dv != nullptr) sddmm_rows<T, I>(g, xf, B, rows, cols, idx, ptr, r0, r1, dv);
    if (dx != nullptr)
      spmm_rows<T, int32_t>(g, B, rows, vtp, cidx, cptr, split(cptr, cols, t, n), split(cptr, cols, t + 1, n),
                            nullptr, dx, cols);
  });
}

}  // namespace

#define SPARSE_RL_EXPORT(T, I, SUFFIX)                                                                                  \
  extern "C" void srl_forward_##SUFFIX(const T* x, int64_t B, int64_t cols, int64_t sb, int64_t sj, T* xt,            \
                                        const T* vals, const I* idx, const int32_t* ptr, int64_t rows, const T* bias,  \
                                        T* y, int nt) {                                                                \
    forward<T, I>(x, B, cols, sb, sj, xt, vals, idx, ptr, rows, bias, y, nt);                                          \
  }                                                                                                                    \
  extern "C" void srl_backward_##SUFFIX(const T* dy, int64_t B, int64_t rows, int64_t sb, int64_t sj, T* dyt,          \
                                         const T* x, int64_t cols, int64_t sxb, int64_t sxj, T* xt, const T* vals,     \
                                         const I* idx, const int32_t* ptr, const int32_t* cptr, const int32_t* cidx,   \
                                         const int32_t* perm, T* dx, T* dv, T* db, int nt) {                           \
    backward<T, I>(dy, B, rows, sb, sj, dyt, x, cols, sxb, sxj, xt, vals, idx, ptr, cptr, cidx, perm, dx, dv, db, nt); \
  }

SPARSE_RL_EXPORT(float, int16_t, f32_i16)
SPARSE_RL_EXPORT(float, int32_t, f32_i32)
SPARSE_RL_EXPORT(double, int16_t, f64_i16)
SPARSE_RL_EXPORT(double, int32_t, f64_i32)

extern "C" int srl_abi_version() { return 1; }
