from vgen.cli import main

main()
