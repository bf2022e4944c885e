"""An API gateway that gives existing backends a complete public-API edge."""

__version__ = "0.1.0"
