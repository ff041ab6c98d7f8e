"""Serves a u2qt tokenizer: FastAPI + ONNX Runtime + Redis. Never imports torch."""
