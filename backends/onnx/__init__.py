"""ONNX Runtime backends: the model builder's export (export.py), run by onnxruntime-genai or plain onnxruntime."""
