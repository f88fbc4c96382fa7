from nova.cli import main

main()
