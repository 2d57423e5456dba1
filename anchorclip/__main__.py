import sys

from anchorclip.cli import main

sys.exit(main())
