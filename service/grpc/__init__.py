"""The Open Inference Protocol over gRPC: the server process and its codec (the stubs are
generated into service/stubs)."""
