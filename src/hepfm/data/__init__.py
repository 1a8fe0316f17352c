"""Jet data: the in-memory layout, readers/writers of the public formats, features and streaming."""
