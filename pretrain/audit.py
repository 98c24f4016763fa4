"""``python -m pretrain.audit RUN_DIR [--json]``: the spelling of ``python -m pretrain audit``
kept for scripts written before the command joined ``python -m pretrain``."""

import sys

from pretrain.cli import main

if __name__ == "__main__":
    sys.exit(main(["audit", *sys.argv[1:]]))
