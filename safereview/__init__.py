"""safereview: human review of multimodal AI-safety judgments."""

__version__ = "0.1.0"
