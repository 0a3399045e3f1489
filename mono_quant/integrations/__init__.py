"""Integrations with other libraries, each imported only when asked for.

``mono_quant.integrations.transformers``: ``save_pretrained`` / ``from_pretrained`` of models
quantized by mono_quant, and quantizing while loading (needs transformers >= 5).
"""
