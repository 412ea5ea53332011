"""Training-loop integrations, each loaded only when imported (their frameworks are optional extras).

* :mod:`gradflow.integrations.lightning` — ``RetentionCallback`` for PyTorch Lightning (``gradflow[lightning]``).
* :mod:`gradflow.integrations.hf` — ``RetentionCallback`` / ``attach`` for the Hugging Face ``Trainer``
  (``gradflow[hf]``).

For a plain PyTorch loop use :class:`gradflow.Monitor`. ``import gradflow`` never imports a framework.
"""
