// A direct Python entry to ssrvg::ms_deform_attn for plain tensors: the decoder's few-query call
// takes microseconds, and `torch.ops.ssrvg.ms_deform_attn.default(...)` adds ~2.5 us of boxing to
// it (schema matching, IValue conversion). This calls the same dispatcher entry unboxed, so autograd
// (ms_deform_attn_autograd.cpp), autocast, profiling and dispatch modes behave exactly as through
// torch.ops. Anything else -- a tensor subclass or a torch-function mode (which torch.ops would hand
// to __torch_function__), a device without a kernel here, a non-tensor argument -- gets
// NotImplemented back, and the Python wrapper (ssrvg_ext/ops/ms_deform_attn.py) takes torch.ops.

#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

namespace ssrvg {
namespace msda {

PyObject* ms_deform_attn_fastcall(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 5) {
    PyErr_Format(PyExc_TypeError, "ms_deform_attn takes 5 arguments (%zd given)", nargs);
    return nullptr;
  }
  if (at::impl::torch_function_mode_enabled()) Py_RETURN_NOTIMPLEMENTED;
  for (Py_ssize_t i = 0; i < nargs; ++i)
    if (!THPVariable_CheckExact(args[i])) Py_RETURN_NOTIMPLEMENTED;
  const at::Tensor& value = THPVariable_Unpack(args[0]);
#ifdef SSRVG_WITH_CUDA
  const bool has_kernel = value.is_cpu() || value.is_cuda();
#else
  const bool has_kernel = value.is_cpu();
#endif
  if (!has_kernel) Py_RETURN_NOTIMPLEMENTED;
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("ssrvg::ms_deform_attn", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&)>();
  at::Tensor out;
  {
    pybind11::gil_scoped_release no_gil;  // as torch.ops does: other Python threads run meanwhile
    out = op.call(value, THPVariable_Unpack(args[1]), THPVariable_Unpack(args[2]), THPVariable_Unpack(args[3]),
                  THPVariable_Unpack(args[4]));
  }
  return THPVariable_Wrap(std::move(out));
  END_HANDLE_TH_ERRORS
}

}  // namespace msda
}  // namespace ssrvg
