import sys

from lipizzaner_cell.cell_main import main

sys.exit(main())
