"""Data in and out: media validation and storage, import (generic, Uni-SafeBench, VLSU), export, demo."""
