"""Export of the deploy model: FP32 ONNX (onnx.py), QDQ INT8 ONNX (qdq.py), TensorRT engines (tensorrt.py)."""
