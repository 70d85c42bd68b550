"""The HTTP API (FastAPI): `create_app(settings)` in app.py; routes in routes/, logic in logic.py."""
