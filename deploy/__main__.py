"""``python -m deploy``: the ``dualflower-deploy`` command line."""

import sys

from deploy.cli import main

sys.exit(main())
