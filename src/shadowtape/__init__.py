"""shadowtape: record HTTP traffic, scrub it deterministically, replay it against staging."""

__version__ = "0.1.0"
