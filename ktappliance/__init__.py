"""ktappliance: build container appliances that run DeepSeek-R1 with KTransformers."""

__version__ = "0.1.0"
