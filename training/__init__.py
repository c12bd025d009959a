"""Training side: the only package that imports TensorFlow."""

import os

# Set before any module here imports TensorFlow: keeps its C++ start-up chatter off the console.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class TrainingError(Exception):
    """A run that cannot go on; the message is one line for the user."""
