import sys

from layermask_service.cli import main

sys.exit(main())
