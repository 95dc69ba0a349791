"""``python -m cait_edu.bench``: see :mod:`cait_edu.bench`."""
from .cli import main

main()
