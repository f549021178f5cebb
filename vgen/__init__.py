"""vgen: text-to-video generation with Vico, StreamingT2V, ZS2 and I4VGen on diffusers models."""

__version__ = "0.2.0"
