"""``python -m gendiv``: the ``gendiv`` command, for launchers that run modules
(``accelerate launch -m gendiv stage sft --profile smol``)."""

import sys

from gendiv.cli import main

if __name__ == "__main__":
    sys.exit(main())
