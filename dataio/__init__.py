"""dataio."""
