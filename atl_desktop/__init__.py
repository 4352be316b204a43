"""ATL Desktop: active and transfer learning on your own images."""

__version__ = "0.1.0"
