"""Page scripts of the review app (registered in ``review_app/nav.py``)."""
