"""The service family: a generated FastAPI service (app.py, signature.json, the model, requirements, Dockerfile)."""
