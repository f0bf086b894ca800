"""``python -m ci_client ...`` is ``ci ...``."""

from ._cli import main

main()
