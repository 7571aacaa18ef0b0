// CSR sparse-matrix kernels for sparse_rl, behind a C ABI for ctypes (the fallback when the PyTorch operators of
// torch_ops.cpp cannot be built). The kernels themselves are in csr_core.h (shared with torch_ops.cpp).
//
// Interface (the ABI, below): two entry points, srl_forward and srl_backward, each taking one struct of named fields
// (srl_forward_args, srl_backward_args; the matrix is an srl_csr). The structs are declared once below through field
// lists and mirrored once in Python (sparse_rl/nn/backends/_abi.py); srl_abi_version and srl_abi_layout (every
// struct's size and field offsets, as text) let Python refuse a library that does not match.
#include <string>

#include "csr_core.h"

// ------------------------------------------------------------------------------------------------------------ ABI
// Bump SRL_ABI_VERSION with any change of the structs, the dtype codes, the status codes or the entry points, and
// mirror it in sparse_rl/nn/backends/_abi.py (ABI_VERSION and the ctypes structs). Every field is 8 bytes wide, so
// the layouts have no padding on any 64-bit ABI.
#define SRL_ABI_VERSION 4

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
  X(void*, x_chunked)           /* [batch * cols] receives x feature-major; null when x is feature-major already */   \
  X(void*, y)                   /* [batch, rows] contiguous */                                                         \
  X(int64_t, threads)

// Gradients of y = x W^T + bias given dy. The input comes feature-major: x_chunked (as saved by the forward, [cols,
// batch]) or, when the forward used x in place (x_stride_batch == 1 or batch == 1), x itself with its strides. Null outputs
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
  X(void*, dy_chunked)                /* [batch * rows] scratch for dy feature-major; null when it is already */       \
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
  const bool fm = a->x_stride_batch == 1 || a->batch == 1;
  if (!fm && a->x_chunked == nullptr) return SRL_BAD_ARGUMENT;
  return dispatch_dtypes(a->dtype, w.index_dtype, [&](auto t, auto i) {
    typedef typename decltype(t)::type T;
    typedef typename decltype(i)::type I;
    const srl::Csr<I> m{w.indptr, static_cast<const I*>(w.indices), nullptr, w.blocks, w.nblk, w.rows, w.cols};
    srl::forward<T, I>(srl::Dense<T>{static_cast<const T*>(a->x), a->x_stride_batch, a->x_stride_feature}, a->batch,
                       static_cast<T*>(a->x_chunked), a->batch, static_cast<const T*>(a->values), m,
                       static_cast<const T*>(a->bias), srl::ACT_NONE, static_cast<T*>(a->y), w.rows, false,
                       static_cast<int>(a->threads));
  });
}

extern "C" int64_t srl_backward(const srl_backward_args* a) {
  if (a == nullptr || a->weight == nullptr || a->weight->perm != nullptr) return SRL_BAD_ARGUMENT;
  const srl_csr& w = *a->weight;
  const srl_csr* wt = a->weight_t;
  if (a->dx != nullptr && (wt == nullptr || wt->index_dtype != SRL_INT32 || wt->rows != w.cols || wt->cols != w.rows))
    return SRL_BAD_ARGUMENT;
  const bool dy_fm = a->dy_stride_batch == 1 || a->batch == 1;
  const bool x_fm = a->x_chunked != nullptr || a->x_stride_batch == 1 || a->batch == 1;
  if ((!dy_fm && a->dy_chunked == nullptr) || (a->dvalues != nullptr && (!x_fm || (a->x == nullptr && a->x_chunked == nullptr))))
    return SRL_BAD_ARGUMENT;
  return dispatch_dtypes(a->dtype, w.index_dtype, [&](auto t, auto i) {
    typedef typename decltype(t)::type T;
    typedef typename decltype(i)::type I;
    const srl::Csr<I> m{w.indptr, static_cast<const I*>(w.indices), nullptr, w.blocks, w.nblk, w.rows, w.cols};
    const bool has_t = a->dx != nullptr;
    const srl::Csr<int32_t> mt{has_t ? wt->indptr : nullptr, has_t ? static_cast<const int32_t*>(wt->indices) : nullptr,
                               has_t ? wt->perm : nullptr, has_t ? wt->blocks : nullptr, has_t ? wt->nblk : 0, w.cols,
                               w.rows};
    const T* x = static_cast<const T*>(a->x_chunked ? a->x_chunked : a->x);
    const int64_t ldx = a->x_chunked ? a->batch : a->x_stride_feature;
    srl::backward<T, I>(srl::Dense<T>{static_cast<const T*>(a->dy), a->dy_stride_batch, a->dy_stride_feature},
                        a->batch, srl::Dense<T>{nullptr, 0, 0}, srl::ACT_NONE, x, ldx, static_cast<T*>(a->dy_chunked), a->batch,
                        static_cast<const T*>(a->values), m, mt, static_cast<T*>(a->dx), w.cols, false,
                        static_cast<T*>(a->dvalues), static_cast<T*>(a->dbias), static_cast<int>(a->threads));
  });
}
