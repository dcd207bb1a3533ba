"""model-router: a traffic router for machine-learning models."""

__version__ = "0.1.0"
