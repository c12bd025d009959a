"""The core, free of web and RPC frameworks: the request and response types, the error tree with
its statuses, tensors, the data plane and its hooks, classification, statistics and metrics."""
