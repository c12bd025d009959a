"""The processes: the launcher (`python -m service`), nginx's configuration, gunicorn's config,
the gRPC process pool and the JSON access log."""
