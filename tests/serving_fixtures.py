"""Fixtures that start real predictor servers (filled in by the serving tests)."""
