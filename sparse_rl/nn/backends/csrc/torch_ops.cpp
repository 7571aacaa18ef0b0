// The CSR kernels of csr_core.h registered as PyTorch operators (namespace sparse_rl), with their autograd in C++.
//
// Every operator computes y = act(x W^T + bias) on logical shapes: x [B, cols] -> y [B, rows]. The memory layout is a
// matter of strides: an input whose batch stride is 1 (the transpose of a contiguous [cols, B] tensor) is read in
// place, feature-major; any other input is transposed once. With out_fm the output is allocated feature-major
// ([rows, B] contiguous, returned as its transposed view), so the next sparse layer reads it in place: a chain of
// sparse layers pays one transpose at its input and none between layers.
//
//   spmm(x, values, bias?, indptr, indices, blocks?, act, out_fm) -> y            forward only (no autograd)
//   spmm_fwd(same) -> (y, x_fm)        the forward keeping the feature-major copy of x it made (else an empty tensor)
//   spmm_backward(grad, x, y?, values, has_bias, indptr, indices, blocks?, colptr, rowidx, perm, cblocks?, act, dx_fm,
//       need) -> (grad_x, grad_values, grad_bias)  the gradients (empty tensors for those not in need; grad_x
//       feature-major when dx_fm, the layout of the forward's original input)
//   linear(x, values, bias?, indptr, indices, blocks?, colptr, rowidx, perm, cblocks?, act, out_fm) -> y
//       spmm with its autograd in C++: one graph node whose forward and backward call spmm_fwd and spmm_backward
//       through the dispatcher (so fake tensors, torch.compile and torch.export see them)
//
// act: 0 none, 1 ReLU, 2 Tanh (fused into the kernel's epilogue; its derivative is taken from the saved output).
// blocks / cblocks: column blocks of the CSR / CSC layout (int32 [(nblk + 1) * rows]) or None. colptr / rowidx / perm:
// the CSC layout (int32). Fake (meta) implementations are registered from Python (sparse_rl/nn/backends/ops.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "csr_core.h"

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

constexpr int64_t kOpsVersion = 2;  // bumped with any change of the schemas below (checked from Python)

template <typename T>
T* ptr_or_null(const OptTensor& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

int64_t num_blocks(const OptTensor& blocks, int64_t rows) {
  if (!blocks.has_value() || !blocks->defined() || rows == 0) return 0;
  return blocks->numel() / rows - 1;
}

// One dtype dispatch for the value type T (float, double) and the index type I (int16, int32).
template <typename F>
void dispatch(const Tensor& values, const Tensor& indices, F&& f) {
  const bool f32 = values.scalar_type() == at::kFloat;
  TORCH_CHECK(f32 || values.scalar_type() == at::kDouble, "sparse_rl: values must be float32 or float64");
  const bool i16 = indices.scalar_type() == at::kShort;
  TORCH_CHECK(i16 || indices.scalar_type() == at::kInt, "sparse_rl: indices must be int16 or int32");
  if (f32 && i16) f(float{}, int16_t{});
  else if (f32) f(float{}, int32_t{});
  else if (i16) f(double{}, int16_t{});
  else f(double{}, int32_t{});
}

void check_args(const Tensor& x, const Tensor& values, const OptTensor& bias, const Tensor& indptr, const Tensor& indices,
                int64_t act) {
  TORCH_CHECK(x.dim() == 2, "sparse_rl: the input must be 2-D [batch, features], got ", x.sizes());
  TORCH_CHECK(x.device().is_cpu() && values.device().is_cpu(), "sparse_rl: the kernels run on CPU tensors");
  TORCH_CHECK(x.scalar_type() == values.scalar_type(), "sparse_rl: input and values dtypes differ");
  TORCH_CHECK(values.is_contiguous() && indices.is_contiguous() && indptr.is_contiguous(),
              "sparse_rl: values, indices and indptr must be contiguous");
  TORCH_CHECK(indptr.scalar_type() == at::kInt && indptr.dim() == 1 && indptr.numel() >= 1, "sparse_rl: bad indptr");
  TORCH_CHECK(indices.numel() == values.numel(), "sparse_rl: values and indices differ in size");
  TORCH_CHECK(!bias.has_value() || !bias->defined() ||
                  (bias->is_contiguous() && bias->numel() == indptr.numel() - 1 && bias->scalar_type() == values.scalar_type()),
              "sparse_rl: bad bias");
  TORCH_CHECK(act >= 0 && act <= 2, "sparse_rl: act must be 0 (none), 1 (relu) or 2 (tanh)");
}

// Whether a logical [B, n] tensor is feature-major in memory (the kernels read it in place).
bool is_fm(const Tensor& t) { return t.stride(0) == 1 || t.size(0) == 1; }

// The same for a tensor that may have symbolic sizes (fake tensors while torch.compile traces the autograd kernel).
bool is_fm_sym(const Tensor& t) {
  return t.sym_stride(0) == 1 || t.sym_size(0) == 1;  // SymInt comparisons guard and give a bool
}

// A logical [B, n] tensor stored feature-major, with srl::fm_ld's padded row stride: strides (1, ld).
Tensor fm_empty(int64_t B, int64_t n, const at::TensorOptions& options) {
  const int64_t ld = options.dtype() == at::kDouble ? srl::fm_ld<double>(B) : srl::fm_ld<float>(B);
  return at::empty({n, ld}, options).narrow(1, 0, B).t();
}

// y = act(x W^T + bias); also returns the feature-major copy of x when x had to be transposed and keep_xfm is set
// (else an undefined tensor: the copy lived in a per-thread scratch buffer).
std::tuple<Tensor, Tensor> forward_impl(const Tensor& x, const Tensor& values, const OptTensor& bias, const Tensor& indptr,
                                        const Tensor& indices, const OptTensor& blocks, int64_t act, bool out_fm,
                                        bool keep_xfm) {
  check_args(x, values, bias, indptr, indices, act);
  const int64_t B = x.size(0), cols = x.size(1), rows = indptr.numel() - 1;
  Tensor y = out_fm ? fm_empty(B, rows, values.options()) : at::empty({B, rows}, values.options());
  Tensor xfm;
  if (B == 0) return {y, xfm};
  dispatch(values, indices, [&](auto tv, auto iv) {
    using T = decltype(tv);
    using I = decltype(iv);
    T* scratch = nullptr;
    int64_t ld = srl::fm_ld<T>(B);
    if (!is_fm(x)) {
      if (keep_xfm) {
        xfm = fm_empty(B, cols, values.options());
        scratch = xfm.data_ptr<T>();
      } else {
        scratch = srl::tile_buffer<T, 1>(cols * ld);  // reused across calls: no page faults
      }
    }
    const srl::Csr<I> w{indptr.data_ptr<int32_t>(), indices.data_ptr<I>(), nullptr, ptr_or_null<int32_t>(blocks),
                        num_blocks(blocks, rows), rows, cols};
    srl::forward<T, I>(srl::Dense<T>{x.data_ptr<T>(), x.stride(0), x.stride(1)}, B, scratch, ld, values.data_ptr<T>(), w,
                       ptr_or_null<T>(bias), act, y.data_ptr<T>(), out_fm ? y.stride(1) : rows, out_fm,
                       at::get_num_threads());
  });
  return {y, xfm};
}

// The gradients. x is the forward's logical input [B, cols] (transposed here when it is not feature-major; the
// autograd path hands in the feature-major copy the forward kept), y its output (read when act is not none).
std::tuple<Tensor, Tensor, Tensor> backward_impl(const Tensor& grad, const Tensor& x, const Tensor& y, const Tensor& values,
                                                 bool has_bias, const Tensor& indptr, const Tensor& indices,
                                                 const OptTensor& blocks, const Tensor& colptr, const Tensor& rowidx,
                                                 const Tensor& perm, const OptTensor& cblocks, int64_t act, bool dx_fm,
                                                 bool need_x, bool need_v, bool need_b) {
  const int64_t B = x.size(0), cols = x.size(1), rows = indptr.numel() - 1;
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == B && grad.size(1) == rows, "sparse_rl: bad output gradient shape");
  const Tensor g = grad.scalar_type() == values.scalar_type() ? grad : grad.to(values.scalar_type());
  dx_fm = dx_fm && B > 1;
  Tensor dx = need_x ? (dx_fm ? fm_empty(B, cols, values.options()) : at::empty({B, cols}, values.options())) : Tensor();
  Tensor dv = need_v ? at::empty_like(values) : Tensor();
  Tensor db = need_b && has_bias ? at::empty({rows}, values.options()) : Tensor();
  if (B == 0) {
    if (dv.defined()) dv.zero_();
    if (db.defined()) db.zero_();
    return {dx, dv, db};
  }
  TORCH_CHECK(act == srl::ACT_NONE || (y.defined() && y.size(0) == B && y.size(1) == rows),
              "sparse_rl: a fused activation needs the forward's output");
  if (need_x)
    TORCH_CHECK(colptr.numel() == cols + 1 && rowidx.numel() == values.numel() && perm.numel() == values.numel() &&
                    colptr.scalar_type() == at::kInt && rowidx.scalar_type() == at::kInt && perm.scalar_type() == at::kInt,
                "sparse_rl: bad CSC layout");
  const Tensor xf = !need_v || is_fm(x) ? x : x.t().contiguous().t();  // feature-major [B, cols] view
  dispatch(values, indices, [&](auto tv, auto iv) {
    using T = decltype(tv);
    using I = decltype(iv);
    const srl::Csr<I> w{indptr.data_ptr<int32_t>(), indices.data_ptr<I>(), nullptr, ptr_or_null<int32_t>(blocks),
                        num_blocks(blocks, rows), rows, cols};
    const srl::Csr<int32_t> wt{need_x ? colptr.data_ptr<int32_t>() : nullptr, need_x ? rowidx.data_ptr<int32_t>() : nullptr,
                               need_x ? perm.data_ptr<int32_t>() : nullptr, need_x ? ptr_or_null<int32_t>(cblocks) : nullptr,
                               need_x ? num_blocks(cblocks, cols) : 0, cols, rows};
    const bool g_in_place = is_fm(g) && act == srl::ACT_NONE;
    const int64_t lddz = srl::fm_ld<T>(B);
    T* dz = g_in_place ? nullptr : srl::tile_buffer<T, 2>(rows * lddz);
    const srl::Dense<T> yd = act == srl::ACT_NONE ? srl::Dense<T>{nullptr, 0, 0}
                                                  : srl::Dense<T>{y.data_ptr<T>(), y.stride(0), y.stride(1)};
    srl::backward<T, I>(srl::Dense<T>{g.data_ptr<T>(), g.stride(0), g.stride(1)}, B, yd, act,
                        need_v ? xf.data_ptr<T>() : nullptr, xf.stride(1), dz, lddz, values.data_ptr<T>(), w, wt,
                        need_x ? dx.data_ptr<T>() : nullptr, need_x && dx_fm ? dx.stride(1) : cols, dx_fm,
                        need_v ? dv.data_ptr<T>() : nullptr, db.defined() ? db.data_ptr<T>() : nullptr,
                        at::get_num_threads());
  });
  return {dx, dv, db};
}

Tensor spmm(const Tensor& x, const Tensor& values, const OptTensor& bias, const Tensor& indptr, const Tensor& indices,
            const OptTensor& blocks, int64_t act, bool out_fm) {
  return std::get<0>(forward_impl(x, values, bias, indptr, indices, blocks, act, out_fm, false));
}

// The forward that keeps what the backward needs: (y, the feature-major copy of x, or an empty tensor when x was
// feature-major already and is the one to save).
std::tuple<Tensor, Tensor> spmm_fwd(const Tensor& x, const Tensor& values, const OptTensor& bias, const Tensor& indptr,
                                    const Tensor& indices, const OptTensor& blocks, int64_t act, bool out_fm) {
  auto [y, xfm] = forward_impl(x, values, bias, indptr, indices, blocks, act, out_fm, true);
  return {y, xfm.defined() ? xfm : at::empty({0}, values.options())};
}

// Not needed gradients come back as empty tensors (every output of an operator is a tensor).
std::tuple<Tensor, Tensor, Tensor> spmm_backward(const Tensor& grad, const Tensor& x, const OptTensor& y, const Tensor& values,
                                                 bool has_bias, const Tensor& indptr, const Tensor& indices,
                                                 const OptTensor& blocks, const Tensor& colptr, const Tensor& rowidx,
                                                 const Tensor& perm, const OptTensor& cblocks, int64_t act, bool dx_fm,
                                                 std::array<bool, 3> need) {
  auto [dx, dv, db] = backward_impl(grad, x, y.has_value() ? *y : Tensor(), values, has_bias, indptr, indices, blocks,
                                    colptr, rowidx, perm, cblocks, act, dx_fm, need[0], need[1], need[2]);
  auto none = [&](const Tensor& t) { return t.defined() ? t : at::empty({0}, values.options()); };
  return {none(dx), none(dv), none(db)};
}

// linear: spmm_fwd / spmm_backward through the dispatcher (so that fake tensors and tracing see them), one graph node.
class LinearFunction : public torch::autograd::Function<LinearFunction> {
 public:
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& x, const Tensor& values, const OptTensor& bias,
                        const Tensor& indptr, const Tensor& indices, const OptTensor& blocks, const Tensor& colptr,
                        const Tensor& rowidx, const Tensor& perm, const OptTensor& cblocks, int64_t act, bool out_fm) {
    static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("sparse_rl::spmm_fwd", "").typed<decltype(spmm_fwd)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, xfm] = op.call(x, values, bias, indptr, indices, blocks, act, out_fm);
    ctx->save_for_backward({xfm.dim() == 2 ? xfm : x, values, act == srl::ACT_NONE ? Tensor() : y});
    ctx->saved_data["bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["act"] = act;
    ctx->saved_data["x_fm"] = is_fm_sym(x);  // the input gradient goes back in the input's layout
    ctx->saved_data["topology"] = std::vector<Tensor>{indptr, indices, blocks.value_or(Tensor()), colptr, rowidx, perm,
                                                      cblocks.value_or(Tensor())};
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("sparse_rl::spmm_backward", "").typed<decltype(spmm_backward)>();
    auto saved = ctx->get_saved_variables();  // x (feature-major: the forward's copy when it made one), values, y
    auto topo = ctx->saved_data["topology"].toTensorVector();
    auto opt = [](const Tensor& t) { return t.defined() ? OptTensor(t) : OptTensor(); };
    const bool need_x = ctx->needs_input_grad(0), need_v = ctx->needs_input_grad(1), need_b = ctx->needs_input_grad(2);
    auto [dx, dv, db] = op.call(grads[0], saved[0], opt(saved[2]), saved[1], ctx->saved_data["bias"].toBool(), topo[0],
                                topo[1], opt(topo[2]), topo[3], topo[4], topo[5], opt(topo[6]), ctx->saved_data["act"].toInt(),
                                ctx->saved_data["x_fm"].toBool(), {need_x, need_v, need_b});
    return {need_x ? dx : Tensor(), need_v ? dv : Tensor(), need_b ? db : Tensor(), Tensor(), Tensor(), Tensor(),
            Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor linear_autograd(const Tensor& x, const Tensor& values, const OptTensor& bias, const Tensor& indptr,
                       const Tensor& indices, const OptTensor& blocks, const Tensor& colptr, const Tensor& rowidx,
                       const Tensor& perm, const OptTensor& cblocks, int64_t act, bool out_fm) {
  return LinearFunction::apply(x, values, bias, indptr, indices, blocks, colptr, rowidx, perm, cblocks, act, out_fm);
}

Tensor linear_cpu(const Tensor& x, const Tensor& values, const OptTensor& bias, const Tensor& indptr, const Tensor& indices,
                  const OptTensor& blocks, const Tensor& colptr, const Tensor& rowidx, const Tensor& perm,
                  const OptTensor& cblocks, int64_t act, bool out_fm) {
  return spmm(x, values, bias, indptr, indices, blocks, act, out_fm);
}

int64_t ops_version() { return kOpsVersion; }

}  // namespace

TORCH_LIBRARY(sparse_rl, m) {
  m.def("ops_version() -> int");
  m.def("spmm(Tensor x, Tensor values, Tensor? bias, Tensor indptr, Tensor indices, Tensor? blocks, int act=0, "
        "bool out_fm=False) -> Tensor");
  m.def("spmm_fwd(Tensor x, Tensor values, Tensor? bias, Tensor indptr, Tensor indices, Tensor? blocks, int act=0, "
        "bool out_fm=False) -> (Tensor, Tensor)");
  m.def("spmm_backward(Tensor grad, Tensor x, Tensor? y, Tensor values, bool has_bias, Tensor indptr, Tensor indices, "
        "Tensor? blocks, Tensor colptr, Tensor rowidx, Tensor perm, Tensor? cblocks, int act, bool dx_fm, bool[3] need) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("linear(Tensor x, Tensor values, Tensor? bias, Tensor indptr, Tensor indices, Tensor? blocks, Tensor colptr, "
        "Tensor rowidx, Tensor perm, Tensor? cblocks, int act=0, bool out_fm=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(sparse_rl, CompositeExplicitAutograd, m) { m.impl("ops_version", &ops_version); }

TORCH_LIBRARY_IMPL(sparse_rl, CPU, m) {
  m.impl("spmm", &spmm);
  m.impl("spmm_fwd", &spmm_fwd);
  m.impl("spmm_backward", &spmm_backward);
  m.impl("linear", &linear_cpu);
}

TORCH_LIBRARY_IMPL(sparse_rl, Autograd, m) { m.impl("linear", &linear_autograd); }
