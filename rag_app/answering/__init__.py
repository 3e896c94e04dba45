"""answering layer."""
