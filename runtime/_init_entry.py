"""Starts the container init helper (_init.py) from its cached bytecode.

A script run by path is compiled again at every start; a module it imports
comes from __pycache__. The helper runs at every container start and exec,
so this saves a few milliseconds each time. Run with -I -S, so the script's
own directory is not on sys.path until it is put there.
"""

import sys

sys.path.insert(0, __file__.rpartition("/")[0])

import _init

_init.main(sys.argv[1:])
