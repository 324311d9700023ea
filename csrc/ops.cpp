// Every schema of the ssrvg operator library, defined once.
//
// Kernels register per dispatch key next to their op: csrc/<op>/<op>_cpu.cpp (CPU) and
// csrc/<op>/<op>_cuda.cu (CUDA, compiled only in CUDA builds). The Python wrappers in
// ssrvg_ext/ops/ add fake (meta) kernels and autograd formulas.
//
// RLE batches are three tensors: `counts` (int64, all run lengths of all masks concatenated),
// `offsets` (int64, N+1: mask i owns counts[offsets[i]:offsets[i+1]]) and, where sizes vary,
// `sizes` (int64, (N, 2) rows of (H, W)). See docs/design.md for the exact semantics.

#include <Python.h>
#include <torch/library.h>

namespace ssrvg::msda {
PyObject* ms_deform_attn_fastcall(PyObject*, PyObject* const*, Py_ssize_t);  // ms_deform_attn_python.cpp
}

// Importing ssrvg_ext._C runs the static registrations below; it needs a module init. Its one
// function is the direct entry to ms_deform_attn for plain tensors (see ms_deform_attn_python.cpp).
PyMODINIT_FUNC PyInit__C(void) {
  static PyMethodDef methods[] = {
      {"ms_deform_attn", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&ssrvg::msda::ms_deform_attn_fastcall)),
       METH_FASTCALL, "ssrvg::ms_deform_attn for plain tensors; NotImplemented for anything torch.ops must handle"},
      {nullptr, nullptr, 0, nullptr}};
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(ssrvg, m) {
  // ---- COCO run-length encoding (csrc/rle) ----
  // masks (N, H, W) uint8/bool, row-major; pixels are read column-major as COCO does.
  m.def("rle_encode(Tensor masks) -> (Tensor counts, Tensor offsets)");
  // All masks share one size; returns (N, h, w) uint8 on the device of `counts`.
  m.def("rle_decode(Tensor counts, Tensor offsets, int h, int w) -> Tensor");
  // COCO compressed strings: chars (uint8, concatenated) with char_offsets (N+1).
  m.def("rle_to_string(Tensor counts, Tensor offsets) -> (Tensor chars, Tensor char_offsets)");
  m.def("rle_from_string(Tensor chars, Tensor char_offsets, Tensor sizes) -> (Tensor counts, Tensor offsets)");
  // Validates that every mask's counts are non-negative and sum to H*W.
  m.def("rle_check(Tensor counts, Tensor offsets, Tensor sizes) -> ()");
  m.def("rle_area(Tensor counts, Tensor offsets) -> Tensor");
  // (N, 4) float64 [x, y, w, h], pycocotools' rleToBbox.
  m.def("rle_to_bbox(Tensor counts, Tensor offsets, Tensor sizes) -> Tensor");
  // Union (or intersection) of all N masks into one; returns its counts.
  m.def("rle_merge(Tensor counts, Tensor offsets, Tensor sizes, bool intersect) -> Tensor");
  // (D, G) float64 IoU matrix with pycocotools' rules (bbox pre-filter, -1 on size mismatch, crowd).
  m.def(
      "rle_iou(Tensor dt_counts, Tensor dt_offsets, Tensor dt_sizes, Tensor gt_counts, "
      "Tensor gt_offsets, Tensor gt_sizes, Tensor iscrowd) -> Tensor");
  // Pairwise IoU of binary masks (N, H, W) x (M, H, W) -> (N, M) float64, same numbers as rle_iou.
  m.def("mask_iou(Tensor a, Tensor b, Tensor iscrowd) -> Tensor");

  // ---- fused upsampled mask loss (csrc/mask_loss) ----
  // logits (B, h, w) float, targets (B, H, W) uint8/bool, valid (B, H, W) or None. Returns (B, 5)
  // per-mask sums over valid pixels of [p*t, p, t, BCE, focal(alpha, gamma)] where
  // p = sigmoid(bilinear_upsample(logits, (H, W), align_corners=False)). float32 (float64 for
  // float64 logits).
  m.def("upsampled_mask_sums(Tensor logits, Tensor targets, Tensor? valid, float alpha, float gamma) -> Tensor");
  m.def(
      "upsampled_mask_sums_backward(Tensor grad, Tensor logits, Tensor targets, Tensor? valid, float alpha, "
      "float gamma) -> Tensor");
  // The whole loss in one op: terms (0 dice, 1 soft_iou, 2 bce, 3 focal), each per mask from its
  // sums, summed over masks / num_masks, weighted and added. Returns (loss (), values (4,): each
  // asked-for term unweighted, 0 for the others, stats (B, 6): the five sums and the number of
  // valid pixels of each mask, for the backward). float32 (float64 for float64 logits).
  m.def(
      "upsampled_mask_loss(Tensor logits, Tensor targets, Tensor? valid, int[] terms, float[] weights, float alpha, "
      "float gamma, float num_masks) -> (Tensor, Tensor, Tensor)");
  m.def(
      "upsampled_mask_loss_backward(Tensor grad_loss, Tensor grad_values, Tensor stats, Tensor logits, "
      "Tensor targets, Tensor? valid, int[] terms, float[] weights, float alpha, float gamma, float num_masks) "
      "-> Tensor");
  // Inference: logits (B, h, w) of a padded (in_h, in_w) input -> upsample to the input, keep the
  // top-left (crop_h, crop_w), resize to (out_h, out_w), logit > threshold -> uint8 (B, out_h, out_w).
  m.def(
      "mask_postprocess(Tensor logits, int in_h, int in_w, int crop_h, int crop_w, int out_h, int out_w, "
      "float threshold) -> Tensor");

  // ---- multi-scale deformable attention (csrc/ms_deform_attn) ----
  // value (N, S, M, D), spatial_shapes (L, 2) int64 (H, W), level_start_index (L,) int64,
  // sampling_locations (N, Lq, M, L, P, 2) normalised (x, y), attention_weights (N, Lq, M, L, P)
  // -> (N, Lq, M*D). Same argument order and math as Deformable DETR's op.
  m.def(
      "ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index, Tensor sampling_locations, "
      "Tensor attention_weights) -> Tensor");
  // -> (grad_value, grad_sampling_locations, grad_attention_weights)
  m.def(
      "ms_deform_attn_backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> (Tensor, Tensor, Tensor)");
}
