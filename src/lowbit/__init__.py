"""lowbit: turn convolutional networks into low-bit networks, and measure what it costs."""

from lowbit.errors import LowbitError

__version__ = "0.1.0"

__all__ = ["LowbitError", "__version__"]


def __getattr__(name: str):  # lazy: `import lowbit` stays cheap for the CLI
    if name == "quantize_model":
        from lowbit.transform import quantize_model

        return quantize_model
    if name == "create_model":
        from lowbit.models import create_model

        return create_model
    raise AttributeError(f"module 'lowbit' has no attribute {name!r}")
