"""The serving runtime: KServe start-up, the model, codecs, batching, image decoding, admission, metrics."""
