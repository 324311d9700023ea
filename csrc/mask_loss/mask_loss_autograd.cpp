// Autograd of ssrvg::upsampled_mask_loss in C++ (as ms_deform_attn_autograd.cpp): the loss is one op
// forward and one op backward with no Python in between, which matters where the kernels take
// microseconds (small masks, a GPU). Both redispatch to the device kernels (mask_loss_cpu.cpp /
// _cuda.cu), or to the fake kernels under torch.compile.

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "mask_loss.h"

namespace ssrvg {
namespace mask_loss {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using LossOut = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

LossOut loss_op(const at::Tensor& logits, const at::Tensor& targets, const c10::optional<at::Tensor>& valid,
                at::IntArrayRef terms, at::ArrayRef<double> weights, double alpha, double gamma, double num_masks) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("ssrvg::upsampled_mask_loss", "")
                       .typed<LossOut(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                      at::IntArrayRef, at::ArrayRef<double>, double, double, double)>();
  return op.call(logits, targets, valid, terms, weights, alpha, gamma, num_masks);
}

at::Tensor loss_backward_op(const at::Tensor& grad_loss, const at::Tensor& grad_values, const at::Tensor& stats,
                            const at::Tensor& logits, const at::Tensor& targets,
                            const c10::optional<at::Tensor>& valid, at::IntArrayRef terms,
                            at::ArrayRef<double> weights, double alpha, double gamma, double num_masks) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("ssrvg::upsampled_mask_loss_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const c10::optional<at::Tensor>&, at::IntArrayRef,
                                         at::ArrayRef<double>, double, double, double)>();
  return op.call(grad_loss, grad_values, stats, logits, targets, valid, terms, weights, alpha, gamma, num_masks);
}

class UpsampledMaskLoss : public torch::autograd::Function<UpsampledMaskLoss> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& targets,
                               const c10::optional<at::Tensor>& valid, at::IntArrayRef terms,
                               at::ArrayRef<double> weights, double alpha, double gamma, double num_masks) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, values, stats] = loss_op(logits, targets, valid, terms, weights, alpha, gamma, num_masks);
    ctx->save_for_backward({logits, targets, valid.has_value() ? *valid : at::Tensor(), stats});
    ctx->saved_data["terms"] = terms.vec();
    ctx->saved_data["weights"] = weights.vec();
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["gamma"] = gamma;
    ctx->saved_data["num_masks"] = num_masks;
    ctx->mark_non_differentiable({stats});
    return {loss, values, stats};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    const at::Tensor& stats = s[3];
    // an output nobody differentiated arrives undefined: its gradient is zero
    const at::Tensor grad_loss = grads[0].defined() ? grads[0] : at::zeros({}, stats.options());
    const at::Tensor grad_values = grads[1].defined() ? grads[1] : at::zeros({kTerms}, stats.options());
    at::Tensor grad_logits;
    if (ctx->needs_input_grad(0)) {
      const std::vector<int64_t> terms = ctx->saved_data["terms"].toIntVector();
      const std::vector<double> weights = ctx->saved_data["weights"].toDoubleVector();
      grad_logits = loss_backward_op(grad_loss, grad_values, stats, s[0], s[1],
                                     s[2].defined() ? c10::optional<at::Tensor>(s[2]) : c10::nullopt, terms, weights,
                                     ctx->saved_data["alpha"].toDouble(), ctx->saved_data["gamma"].toDouble(),
                                     ctx->saved_data["num_masks"].toDouble());
    }
    return {grad_logits, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

LossOut loss_autograd(const at::Tensor& logits, const at::Tensor& targets, const c10::optional<at::Tensor>& valid,
                      at::IntArrayRef terms, at::ArrayRef<double> weights, double alpha, double gamma,
                      double num_masks) {
  variable_list out = UpsampledMaskLoss::apply(logits, targets, valid, terms, weights, alpha, gamma, num_masks);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(ssrvg, Autograd, m) {
  m.impl("upsampled_mask_loss", &loss_autograd);
}

}  // namespace mask_loss
}  // namespace ssrvg
