import sys

from torchship.cli.main import main

sys.exit(main())
