import sys

from layermask.cli import main

sys.exit(main())
