from lifeloop.cli import main

main()
