"""SSD predictor benchmarks: raw model, ONNX Runtime peer, served end to end, GPU check (bench/README.md)."""
