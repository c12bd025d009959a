"""One codec per wire format: pure functions from bytes or documents to an InferenceRequest, and
from an InferenceResponse back. No Flask here, so each is unit-tested without HTTP."""
