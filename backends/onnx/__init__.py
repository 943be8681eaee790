"""ONNX Runtime backends: the model builder's export (export.py), run by onnxruntime-genai (genai.py) or plain
onnxruntime (ort.py); ONNX Runtime's profiler output read back (profile.py)."""
