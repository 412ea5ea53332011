"""Renderers: turn run records into what people read. They read records and never recompute."""
