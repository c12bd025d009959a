"""Training side: the only package that imports TensorFlow."""

import os

# Set before any module here imports TensorFlow: hides its C++ INFO and WARNING lines. The lines
# logged while its libraries load ignore it; python -m training filters those (training/quiet.py).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class TrainingError(Exception):
    """A run that cannot go on; the message is one line for the user."""


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception as one short line for an error message: its type and its first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
