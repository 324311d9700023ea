// Autograd of ssrvg::ms_deform_attn in C++ (as torchvision's csrc/ops/autograd): one kernel for the
// Autograd key, so a forward + backward pays no Python per call -- at the decoder's few queries the
// op itself takes microseconds and a Python autograd.Function would cost more than the kernels.
// Forward and backward redispatch to the device kernels (ms_deform_attn_cpu.cpp / _cuda.cu), and to
// the fake kernels under torch.compile.

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace ssrvg {
namespace msda {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor forward_op(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts,
                      const at::Tensor& loc, const at::Tensor& attn) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("ssrvg::ms_deform_attn", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&)>();
  return op.call(value, shapes, starts, loc, attn);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_op(const at::Tensor& grad, const at::Tensor& value,
                                                           const at::Tensor& shapes, const at::Tensor& starts,
                                                           const at::Tensor& loc, const at::Tensor& attn) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("ssrvg::ms_deform_attn_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, const at::Tensor&)>();
  return op.call(grad, value, shapes, starts, loc, attn);
}

class MSDeformAttn : public torch::autograd::Function<MSDeformAttn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& value, const at::Tensor& shapes,
                            const at::Tensor& starts, const at::Tensor& loc, const at::Tensor& attn) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({value, shapes, starts, loc, attn});
    return forward_op(value, shapes, starts, loc, attn);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    auto [g_value, g_loc, g_attn] = backward_op(grads[0].contiguous(), s[0], s[1], s[2], s[3], s[4]);
    return {ctx->needs_input_grad(0) ? g_value : at::Tensor(), at::Tensor(), at::Tensor(),
            ctx->needs_input_grad(3) ? g_loc : at::Tensor(), ctx->needs_input_grad(4) ? g_attn : at::Tensor()};
  }
};

at::Tensor ms_deform_attn_autograd(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts,
                                   const at::Tensor& loc, const at::Tensor& attn) {
  return MSDeformAttn::apply(value, shapes, starts, loc, attn);
}

}  // namespace

TORCH_LIBRARY_IMPL(ssrvg, Autograd, m) {
  m.impl("ms_deform_attn", &ms_deform_attn_autograd);
}

}  // namespace msda
}  // namespace ssrvg
