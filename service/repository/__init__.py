"""The model repository, untrusted input: the folder scan, each version's files (hashed and loaded
from the same bytes), the version policy, the registry and its polling."""
