"""The ``ci`` command: the same Rust code as the ``ci`` binary, run from this package."""

import sys

from . import _native


def main() -> None:
    # Named `ci` in its messages whatever started it (`python -m ci_client`, a shim); run_cli
    # ends the process itself, with ci's exit code, once the command is done.
    sys.exit(_native.run_cli(["ci", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
