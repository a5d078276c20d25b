"""Integer deployment: quantized generators as ONNX QDQ files (:mod:`.onnx_qdq`) and torch.export
programs lowered to oneDNN int8 kernels (:mod:`.pt2`), and running and timing them (:mod:`.runtime`)."""
