"""Training side: the only package that imports TensorFlow."""

import os

# Set before any module here imports TensorFlow: hides its C++ INFO and WARNING lines. The lines
# logged while its libraries load ignore it; python -m training filters those (training/quiet.py).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class TrainingError(Exception):
    """A run that cannot go on; the message is one line for the user."""
