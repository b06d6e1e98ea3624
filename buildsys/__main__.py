"""python -m buildsys: the modelbuild CLI."""
from buildsys.cli import main

main()
