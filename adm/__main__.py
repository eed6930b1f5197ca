import sys

from adm.cli.main import main

sys.exit(main())
