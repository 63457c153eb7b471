"""`python -m loraforge` (and `accelerate launch -m loraforge train ...` for several GPUs)."""

import sys

from .cli import main

sys.exit(main())
