"""jzoo: a JAX/TPU-native model zoo of text-to-image and text-to-video generators."""

__version__ = "0.1.0"
