"""``python -m gradflow``: the ``gradflow`` command."""

from gradflow.cli import main

main()
