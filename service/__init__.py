"""The prediction service. gunicorn calls `create_app()`."""

__version__ = "0.1.0"


def create_app(config=None):
    # Imported here so that importing a module of the service does not load Flask and onnxruntime.
    from service.rest.app import build_app

    return build_app(config)
