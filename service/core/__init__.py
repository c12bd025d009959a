"""The core, free of web and RPC frameworks: the request and response types, the error tree with
its statuses, tensors, the data plane, classification, statistics and metrics."""
