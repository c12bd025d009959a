"""The REST side: the Flask app and its hot path, the v2 and TF Serving routes and codecs, access
control, the OpenAPI document and the Flask error mapping."""
