"""Wire formats shared by the server and the client (no kserve, no TensorFlow)."""
