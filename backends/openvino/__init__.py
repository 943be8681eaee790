"""OpenVINO through optimum-intel: IR exports with NNCF weight compression (export.py), the backend (runtime.py)."""
