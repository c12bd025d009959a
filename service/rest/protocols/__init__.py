"""HTTP protocols: the Open Inference Protocol v2 and the TensorFlow Serving REST API."""
