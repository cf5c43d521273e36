import sys

from lipizzaner_cell.runtime.cell_process import main

sys.exit(main())
