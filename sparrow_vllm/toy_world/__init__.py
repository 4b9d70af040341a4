"""A deterministic synthetic video world whose questions can only be answered by looking."""
