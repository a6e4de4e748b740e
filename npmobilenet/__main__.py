import sys

from npmobilenet.cli import main

sys.exit(main())
