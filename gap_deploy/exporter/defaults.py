"""Export defaults that the library and the CLI share, importable without torch."""

DEFAULT_OPSET = 18
SUPPORTED_OPSETS = range(18, 24)
