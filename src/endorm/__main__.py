import sys

from endorm.cli import main

sys.exit(main())
