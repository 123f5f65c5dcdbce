"""review_app."""
