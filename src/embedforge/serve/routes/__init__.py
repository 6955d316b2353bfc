"""The HTTP routes, one router per concern; ``serve.app.create_app`` wires them to one served model."""

from embedforge.serve.routes import embeddings, health, models

ROUTERS = (embeddings.router, models.router, health.router)

__all__ = ["ROUTERS"]
