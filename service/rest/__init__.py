"""The REST side: the Flask app, the route table (Flask's rules and the hot path), the v2 and TF
Serving routes and codecs, access control, the OpenAPI document and the Flask error mapping."""
