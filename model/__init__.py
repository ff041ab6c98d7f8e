"""What a u2qt tokenizer *is*: sources, windows, vocabulary, manifest, and (in `architecture`) the torch model.

Everything here except `model.architecture` and `model.quantizer` imports without torch, so the
service can share the exact code that decides a token.
"""
