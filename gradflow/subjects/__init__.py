"""Subjects gradflow ships (``aaclip``) and the loader for user subjects (``module.path:factory``)."""
