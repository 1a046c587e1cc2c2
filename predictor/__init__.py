"""SSD object-detection predictor for KServe (V1/V2 REST and gRPC)."""

__version__ = "0.1.0"
