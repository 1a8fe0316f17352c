import sys

from hepfm.cli import main

sys.exit(main())
